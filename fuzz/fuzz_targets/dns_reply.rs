//! The DNS reply parser (it reads what arrives on a UDP socket) never
//! panics, never loops, and never accepts a TTL beyond RFC 2181's range
//! (checked inside `read_reply_for_fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gatehouse::proxy::dns::read_reply_for_fuzzing(data);
});
