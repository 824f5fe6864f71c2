//! Path normalisation never panics, and what it accepts is a fixed point
//! without dot segments, also none hidden behind `;` parameters (`..;x`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for merge in [true, false] {
        if let Ok(once) = gatehouse::validate::normalize_path(raw, merge) {
            assert!(once.starts_with('/'));
            assert!(!once.split('/').any(|s| s == "." || s == ".."), "{raw:?} -> {once:?}");
            let dot_with_params = |s: &str| {
                let cut = s.find(';').into_iter().chain(s.find("%3B")).min();
                cut.is_some_and(|c| matches!(&s[..c], "." | ".."))
            };
            assert!(!once.split('/').any(dot_with_params), "{raw:?} -> {once:?}");
            assert_eq!(gatehouse::validate::normalize_path(&once, merge).as_deref(), Ok(once.as_str()));
        }
    }
});
