//! Parsing a policy file never panics, and every error points inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(problem) = gatehouse::config::parse_policy(text, "fuzz.toml") {
        let lines = text.lines().count().max(1) + 1;
        assert!(problem.line <= lines, "line {} of {lines}", problem.line);
        assert!(problem.to_string().starts_with("fuzz.toml:"));
    }
});
