//! The strict JSON parser of schema routes never panics; where it accepts a
//! body it agrees with serde_json, a syntax error for it is one for
//! serde_json too, and a duplicate is reported with a JSON pointer.
#![no_main]

use gatehouse::validate::{JsonError, parse_strict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let plain: Result<serde_json::Value, _> = serde_json::from_slice(data);
    match parse_strict(data) {
        Ok(v) => assert_eq!(plain.ok(), Some(v)),
        Err(JsonError::DuplicateKey(pointer)) => {
            assert!(pointer.starts_with('/'), "{pointer:?}");
            // serde_json stops at the first syntax error, so a duplicate seen
            // before it may still be part of an invalid body: nothing to compare.
        }
        Err(JsonError::Syntax(_)) => assert!(plain.is_err()),
    }
});
