//! The API key format: generating keys and parsing presented ones.
//!
//! ```text
//! gth_ 0123456789AB 0123456789ABCDEFGHIJKL 012345
//! │    │            │                      └ checksum: CRC32 of everything before it, 6 base62 chars
//! │    │            └ secret: 22 base62 chars from the OS RNG (≈131 bits)
//! │    └ key id: 12 base62 chars (public: stored, listed and logged)
//! └ prefix
//! ```
//!
//! (written without the spaces: 44 ASCII characters). Base62 here is the
//! alphabet `0-9A-Za-z`. The checksum (as in GitHub's `ghp_` tokens) lets the
//! gateway and secret scanners reject typos and random strings without any
//! lookup; it is public knowledge and no protection: only the argon2id hash
//! of the secret authenticates a key.
//!
//! Random characters are drawn by rejection sampling (bytes ≥ 248 are
//! discarded), so each is uniform over the 62 symbols with no modulo bias.

use std::fmt;

use rand::TryRngCore;
use rand::rngs::OsRng;

/// Every gatehouse API key starts with this.
pub const PREFIX: &str = "gth_";
/// Length of the key id.
pub const ID_LEN: usize = 12;
/// Length of the secret.
pub const SECRET_LEN: usize = 22;
/// Length of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// The largest multiple of 62 that fits in a byte: bytes at or above it are
/// rejected so that `byte % 62` is uniform.
const REJECT_FROM: u8 = 248;

/// A freshly generated key. `full` is shown to its owner once and never
/// stored; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The key id (public).
    pub id: String,
    /// The whole key, `gth_…`: secret. Show it once, store only the hash of
    /// [`NewKey::secret`].
    pub full: String,
}

impl NewKey {
    /// The secret part, which is what gets hashed and stored.
    pub fn secret(&self) -> &str {
        let start = PREFIX.len() + ID_LEN;
        self.full.get(start..start + SECRET_LEN).unwrap_or("")
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("full", &"<redacted>")
            .finish()
    }
}

/// A presented key that passed the format checks (prefix, length, charset,
/// checksum). It says nothing about whether the key is valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    id: &'a str,
    secret: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The key id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a presented string is not a well-formed gatehouse key. All of this
/// is public knowledge (the format is documented), so it may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// It does not start with `gth_`.
    #[error("not a gatehouse API key (unknown prefix)")]
    Prefix,
    /// It is not exactly [`KEY_LEN`] bytes long.
    #[error("malformed API key (wrong length)")]
    Length,
    /// It contains a character outside base62.
    #[error("malformed API key (invalid character)")]
    Charset,
    /// The checksum does not match (a typo, or not a real key).
    #[error("malformed API key (checksum mismatch)")]
    Checksum,
}

/// The OS random number generator failed: no key was made.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed")]
pub struct KeyGenError(#[source] rand::rand_core::OsError);

/// Generates a new key from the OS RNG.
pub fn generate() -> Result<NewKey, KeyGenError> {
    let mut full = String::with_capacity(KEY_LEN);
    full.push_str(PREFIX);
    push_random_base62(&mut full, ID_LEN)?;
    push_random_base62(&mut full, SECRET_LEN)?;
    let checksum = encode_checksum(crc32fast::hash(full.as_bytes()));
    full.extend(checksum.iter().map(|&b| char::from(b)));
    let id = full
        .get(PREFIX.len()..PREFIX.len() + ID_LEN)
        .unwrap_or_default()
        .to_owned();
    Ok(NewKey { id, full })
}

/// The key with this id and secret, with its checksum. For tests and tools
/// that need a well-formed key with a known id (a real key comes from
/// [`generate`]); `None` unless both parts have the right length and charset.
pub fn assemble(id: &str, secret: &str) -> Option<String> {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok(id, ID_LEN) || !ok(secret, SECRET_LEN) {
        return None;
    }
    let mut full = format!("{PREFIX}{id}{secret}");
    let checksum = encode_checksum(crc32fast::hash(full.as_bytes()));
    full.extend(checksum.iter().map(|&b| char::from(b)));
    Some(full)
}

/// Checks a presented key's form: prefix, exact length, charset, checksum,
/// in that order. Cheap, and done before any lookup or hashing.
pub fn parse(presented: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let rest = presented
        .strip_prefix(PREFIX)
        .ok_or(KeyFormatError::Prefix)?;
    if rest.len() != ID_LEN + SECRET_LEN + CHECKSUM_LEN {
        return Err(KeyFormatError::Length);
    }
    // All ASCII from here on, so the byte offsets below are char boundaries.
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::Charset);
    }
    let body_len = PREFIX.len() + ID_LEN + SECRET_LEN;
    let (body, checksum) = (
        presented.get(..body_len).ok_or(KeyFormatError::Length)?,
        presented.get(body_len..).ok_or(KeyFormatError::Length)?,
    );
    if checksum.as_bytes() != encode_checksum(crc32fast::hash(body.as_bytes())) {
        return Err(KeyFormatError::Checksum);
    }
    let id = rest.get(..ID_LEN).ok_or(KeyFormatError::Length)?;
    let secret = rest
        .get(ID_LEN..ID_LEN + SECRET_LEN)
        .ok_or(KeyFormatError::Length)?;
    Ok(ParsedKey { id, secret })
}

/// A CRC32 as 6 base62 digits, most significant first, zero-padded
/// (62^6 > 2^32, so every value fits and the encoding is one-to-one).
fn encode_checksum(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    let mut n = crc;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Appends `n` uniform base62 characters from the OS RNG.
fn push_random_base62(out: &mut String, n: usize) -> Result<(), KeyGenError> {
    let mut buf = [0u8; 64];
    let mut left = n;
    while left > 0 {
        OsRng.try_fill_bytes(&mut buf).map_err(KeyGenError)?;
        for &b in buf.iter().filter(|&&b| b < REJECT_FROM).take(left) {
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
            left -= 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn key() -> NewKey {
        generate().expect("OS RNG")
    }

    #[test]
    fn round_trip() {
        let k = key();
        assert_eq!(k.full.len(), KEY_LEN);
        assert_eq!(KEY_LEN, 44);
        assert!(k.full.starts_with(PREFIX));
        let parsed = parse(&k.full).unwrap();
        assert_eq!(parsed.id(), k.id);
        assert!(parsed.secret() == k.secret());
        assert_eq!(k.id.len(), ID_LEN);
        assert_eq!(k.secret().len(), SECRET_LEN);
        // (assert! rather than assert_eq!: a failure must not print a key)
        assert!(format!("{PREFIX}{}{}", k.id, k.secret()) == k.full[..KEY_LEN - CHECKSUM_LEN]);
    }

    #[test]
    fn assemble_matches_generate() {
        let k = key();
        assert!(assemble(&k.id, k.secret()).as_deref() == Some(k.full.as_str()));
        let cases = [
            ("short id", "abc", "0123456789012345678901"),
            ("short secret", "0123456789AB", "abc"),
            ("bad charset", "0123456789A-", "0123456789012345678901"),
        ];
        for (name, id, secret) in cases {
            assert_eq!(assemble(id, secret), None, "{name}");
        }
    }

    #[test]
    fn checksum_vector() {
        // Known value: crc32("gth_AAAAAAAAAAAABBBBBBBBBBBBBBBBBBBBBB") encoded by hand here.
        let body = "gth_AAAAAAAAAAAABBBBBBBBBBBBBBBBBBBBBB";
        let crc = crc32fast::hash(body.as_bytes());
        let mut n = u64::from(crc);
        let mut digits = Vec::new();
        for _ in 0..6 {
            digits.push(ALPHABET[(n % 62) as usize]);
            n /= 62;
        }
        digits.reverse();
        assert_eq!(encode_checksum(crc).to_vec(), digits);
        let full = assemble("AAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBB").unwrap();
        assert_eq!(parse(&full).unwrap().id(), "AAAAAAAAAAAA");
        assert_eq!(encode_checksum(0), *b"000000");
        assert_eq!(encode_checksum(u32::MAX), *b"4gfFC3"); // 4294967295 in base62
    }

    #[test]
    fn every_single_character_mutation_is_rejected() {
        let k = key();
        let candidates: Vec<u8> = ALPHABET.iter().copied().chain(*b"_-+/= ").collect();
        let mut checked = 0;
        for i in 0..k.full.len() {
            for &c in &candidates {
                let mut bytes = k.full.clone().into_bytes();
                if bytes[i] == c {
                    continue;
                }
                bytes[i] = c;
                let mutated = String::from_utf8(bytes).unwrap();
                let got = parse(&mutated);
                assert!(got.is_err(), "mutation at {i} to {:?} accepted", c as char);
                if i >= PREFIX.len() && c.is_ascii_alphanumeric() {
                    assert_eq!(got.unwrap_err(), KeyFormatError::Checksum, "at {i}");
                }
                checked += 1;
            }
        }
        assert!(checked > 44 * 60);
    }

    #[test]
    fn malformed_inputs() {
        let k = key();
        let full = k.full.as_str();
        let two_byte = format!("{}é{}", &full[..10], &full[12..]); // same byte length
        let cases: Vec<(&str, String, KeyFormatError)> = vec![
            ("empty", String::new(), KeyFormatError::Prefix),
            (
                "github prefix",
                format!("ghp_{}", &full[4..]),
                KeyFormatError::Prefix,
            ),
            (
                "stripe-like",
                format!("sk_live_{}", &full[4..]),
                KeyFormatError::Prefix,
            ),
            (
                "upper-case prefix",
                format!("GTH_{}", &full[4..]),
                KeyFormatError::Prefix,
            ),
            ("prefix only", PREFIX.to_owned(), KeyFormatError::Length),
            (
                "one short",
                full[..KEY_LEN - 1].to_owned(),
                KeyFormatError::Length,
            ),
            ("one long", format!("{full}0"), KeyFormatError::Length),
            (
                "trailing newline",
                format!("{full}\n"),
                KeyFormatError::Length,
            ),
            ("leading space", format!(" {full}"), KeyFormatError::Prefix),
            (
                "dash in id",
                format!("{}-{}", &full[..5], &full[6..]),
                KeyFormatError::Charset,
            ),
            (
                "NUL in secret",
                format!("{}\0{}", &full[..20], &full[21..]),
                KeyFormatError::Charset,
            ),
            (
                "non-ASCII, same byte length",
                two_byte,
                KeyFormatError::Charset,
            ),
            (
                "checksum zeroed",
                format!("{}000000", &full[..38]),
                KeyFormatError::Checksum,
            ),
            (
                "id and secret swapped",
                format!("{PREFIX}{}{}{}", &full[16..28], &full[4..16], &full[28..]),
                KeyFormatError::Checksum,
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse(&input).unwrap_err(), want, "case {name}");
        }
    }

    #[test]
    fn ten_thousand_keys_are_distinct() {
        let mut fulls = HashSet::new();
        let mut ids = HashSet::new();
        for _ in 0..10_000 {
            let k = key();
            assert!(parse(&k.full).is_ok());
            assert!(ids.insert(k.id.clone()));
            assert!(fulls.insert(k.full));
        }
    }

    #[test]
    fn characters_are_uniform() {
        // 220k secret characters: each symbol expects ~3548 (σ ≈ 59). A
        // `byte % 62` bias would put 8 symbols ~25% above the rest.
        let mut counts: HashMap<char, u32> = HashMap::new();
        let n = 10_000;
        for _ in 0..n {
            for c in key().secret().chars() {
                *counts.entry(c).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 62);
        let expected = f64::from(n as u32 * SECRET_LEN as u32) / 62.0;
        for (c, count) in counts {
            let ratio = f64::from(count) / expected;
            assert!((0.88..1.12).contains(&ratio), "{c}: {count} vs {expected}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let k = key();
        let parsed = parse(&k.full).unwrap();
        for shown in [format!("{k:?}"), format!("{parsed:?}")] {
            assert!(!shown.contains(k.secret()), "{shown}");
            assert!(shown.contains(&k.id));
            assert!(shown.contains("redacted"));
        }
    }
}
