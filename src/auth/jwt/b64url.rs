//! Strict unpadded base64url (RFC 4648 §5) for JWT segments, on the
//! `base64` crate's URL-safe engine: no padding, no whitespace, no other
//! alphabet, no non-zero trailing bits (its defaults for `URL_SAFE_NO_PAD`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Whether `b` is in the base64url alphabet (segments are checked before
/// they are decoded, so a malformed token is refused as a whole).
pub(super) fn is_b64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Strict unpadded base64url decoding; `None` for anything else.
pub(crate) fn b64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// Unpadded base64url encoding (tests forge tokens with it).
#[cfg(test)]
pub(crate) fn b64url_encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}
