//! The HTTP/1 framing guard never panics, and what it lets through is a
//! prefix of its input, possibly followed by the fixed refusal request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (passed, refused) = gatehouse::validate::inspect_stream(data);
    if refused.is_some() {
        assert!(passed.ends_with(gatehouse::validate::REFUSED_REQUEST));
    }
});
