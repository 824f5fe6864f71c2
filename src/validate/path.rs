//! Path normalisation (RFC 3986 section 6, made strict).
//!
//! Unreserved characters are percent-decoded, other escapes are kept with
//! upper-case hex, `.` and `..` segments are resolved and repeated slashes are
//! merged. Refused: encoded `/` or `\`, raw `\`, NUL, malformed escapes,
//! escapes that decode to invalid UTF-8, `..` that would climb above the
//! root, and dot segments carrying path parameters (`..;x`, `.;`, `%2e%2e;`):
//! Tomcat, Jetty and Spring strip `;` parameters from each segment and then
//! resolve the dot segment, so such a path would match one route here and
//! be served as another path by the backend. The output is a fixed point:
//! normalising it again changes nothing.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form (does not start with `/`).
    #[error("path must start with /")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadEscape,
    /// `%2F` or `%5C`: a slash hidden from routing.
    #[error("encoded slash or backslash")]
    EncodedSlash,
    /// A raw backslash.
    #[error("backslash in path")]
    Backslash,
    /// NUL or another control byte.
    #[error("control character in path")]
    ControlChar,
    /// Escapes that do not decode to UTF-8.
    #[error("path is not valid UTF-8 after decoding")]
    InvalidUtf8,
    /// `..` above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// A segment that is `.` or `..` once its `;` parameters are removed
    /// (`..;/`, `.;x/`, `%2e%2e;jsessionid=1/`): a dot segment to servlet
    /// containers, a plain segment to routing.
    #[error("dot segment with path parameters")]
    DotSegmentParams,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `segment` (unreserved escapes already decoded) is `.` or `..`
/// once its path parameters are cut off: everything from the first `;`, or
/// from an encoded `%3B`, which some containers decode before cutting.
fn is_dot_with_params(segment: &str) -> bool {
    let Some(cut) = segment
        .find(';')
        .into_iter()
        .chain(find_encoded_semicolon(segment))
        .min()
    else {
        return false;
    };
    matches!(&segment[..cut], "." | "..")
}

fn find_encoded_semicolon(segment: &str) -> Option<usize> {
    segment
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'))
}

/// The common case, already normal: no escapes, no backslash or control
/// bytes, no dot segments, no `;` (path parameters go to the full
/// algorithm, which checks them), and (when merging) no empty segments.
fn is_plain(bytes: &[u8], merge_slashes: bool) -> bool {
    let mut prev = b'/';
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' | 0..=0x1f | 0x7f..=0xff => return false,
            b'/' => {
                if i > 0 {
                    let seg = &bytes[segment_start..i];
                    if seg == b"." || seg == b".." || (merge_slashes && prev == b'/') {
                        return false;
                    }
                }
                segment_start = i + 1;
            }
            _ => {}
        }
        prev = b;
    }
    let last = &bytes[segment_start..];
    last != b"." && last != b".."
}

/// Normalises `raw` (the path part of a request target, without query).
/// `merge_slashes` folds `//` into `/`.
pub fn normalize_path(raw: &str, merge_slashes: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes, merge_slashes) {
        return Ok(raw.to_owned());
    }
    normalize_full(raw, merge_slashes)
}

/// The general algorithm (also right for plain paths, only slower).
fn normalize_full(raw: &str, merge_slashes: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Pass 1: decode unreserved escapes, canonicalise the rest, and check
    // that the fully decoded form is UTF-8 without control characters.
    let mut text = String::with_capacity(raw.len());
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                0..=0x1f | 0x7f => return Err(PathError::ControlChar),
                _ if is_unreserved(v) => text.push(char::from(v)),
                _ => {
                    text.push('%');
                    text.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                    text.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                }
            }
            decoded.push(v);
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            _ => {}
        }
        // Non-ASCII bytes cannot be pushed as chars one by one; the http
        // crate never gives us any, but be strict if it did.
        if !b.is_ascii() {
            return Err(PathError::InvalidUtf8);
        }
        text.push(char::from(b));
        decoded.push(b);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }

    // Pass 2: resolve dot segments and empty segments.
    let trailing_slash = text.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut ends_in_dir = trailing_slash;
    let segments: Vec<&str> = text.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (idx, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if idx == last {
                    ends_in_dir = true;
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if idx == last {
                    ends_in_dir = true;
                }
            }
            "" if idx != last && merge_slashes => {}
            "" if idx == last => {}
            s if is_dot_with_params(s) => return Err(PathError::DotSegmentParams),
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(text.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if ends_in_dir || out.is_empty() {
        result.push('/');
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_or_refuses() {
        let cases: &[(&str, &str, Result<&str, PathError>)] = &[
            ("root", "/", Ok("/")),
            ("plain", "/a/b", Ok("/a/b")),
            ("trailing slash kept", "/a/b/", Ok("/a/b/")),
            ("dot", "/a/./b", Ok("/a/b")),
            ("dot dot", "/a/b/../c", Ok("/a/c")),
            ("trailing dot dot", "/a/b/..", Ok("/a/")),
            ("trailing dot", "/a/b/.", Ok("/a/b/")),
            ("merge slashes", "/a//b///c", Ok("/a/b/c")),
            ("leading double slash", "//a", Ok("/a")),
            ("decode unreserved", "/%61%62c%2D%7e", Ok("/abc-~")),
            ("encoded dots resolve", "/a/%2e%2E/b", Ok("/b")),
            ("keep reserved escapes upper", "/a%20b%3f", Ok("/a%20b%3F")),
            ("utf8 escapes kept", "/caf%C3%A9", Ok("/caf%C3%A9")),
            ("above root", "/../etc/passwd", Err(PathError::AboveRoot)),
            (
                "encoded above root",
                "/a/%2e%2e/%2e%2e/x",
                Err(PathError::AboveRoot),
            ),
            ("encoded slash", "/a%2Fb", Err(PathError::EncodedSlash)),
            (
                "encoded slash lower",
                "/a%2fb",
                Err(PathError::EncodedSlash),
            ),
            ("encoded backslash", "/a%5cb", Err(PathError::EncodedSlash)),
            ("raw backslash", "/a\\b", Err(PathError::Backslash)),
            ("nul", "/a%00b", Err(PathError::ControlChar)),
            ("bad escape", "/a%zz", Err(PathError::BadEscape)),
            ("short escape", "/a%2", Err(PathError::BadEscape)),
            ("invalid utf8", "/a%C3%28", Err(PathError::InvalidUtf8)),
            ("lone continuation", "/%80", Err(PathError::InvalidUtf8)),
            ("not absolute", "a/b", Err(PathError::NotAbsolute)),
            (
                "dot dot params",
                "/public/..;/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "dot params",
                "/public/.;/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "encoded dot dot params",
                "/public/%2e%2e;/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "mixed encoded dot params",
                "/public/.%2e;x/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "jsessionid on dot dot",
                "/public/..;jsessionid=1/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "dot dot params last",
                "/public/..;",
                Err(PathError::DotSegmentParams),
            ),
            (
                "dot dot params at the root",
                "/..;x",
                Err(PathError::DotSegmentParams),
            ),
            (
                "dot dot encoded semicolon",
                "/public/..%3b/admin",
                Err(PathError::DotSegmentParams),
            ),
            (
                "dot dot params after a plain dot dot",
                "/a/b/../..;/c",
                Err(PathError::DotSegmentParams),
            ),
            ("params on a name kept", "/a;v=1/b", Ok("/a;v=1/b")),
            ("params on an empty segment kept", "/a/;x/b", Ok("/a/;x/b")),
            ("three dots with params kept", "/a/...;x", Ok("/a/...;x")),
            ("dot inside params kept", "/a/b;..", Ok("/a/b;..")),
            ("encoded semicolon kept", "/a%3bb", Ok("/a%3Bb")),
            ("dot dot then params segment", "/a/b/../;x", Ok("/a/;x")),
            ("asterisk", "*", Err(PathError::NotAbsolute)),
        ];
        for (name, input, want) in cases {
            let got = normalize_path(input, true);
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{name}: {input}");
        }
    }

    #[test]
    fn paths_with_params_skip_the_fast_path() {
        let cases = [
            ("params on a name", "/a;b", false),
            ("dot dot params", "/..;/x", false),
            ("plain", "/a/b", true),
        ];
        for (name, raw, plain) in cases {
            assert_eq!(is_plain(raw.as_bytes(), true), plain, "{name}");
        }
        for merge in [true, false] {
            assert_eq!(
                normalize_path("/a//..;/b", merge),
                Err(PathError::DotSegmentParams),
                "merge {merge}"
            );
        }
    }

    #[test]
    fn keeps_slashes_when_not_merging() {
        assert_eq!(normalize_path("/a//b", false).as_deref(), Ok("/a//b"));
        assert_eq!(normalize_path("/a//../b", false).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn output_is_a_fixed_point_without_dot_segments() {
        // A small exhaustive search over paths built from tricky pieces.
        let pieces = [
            "a", ".", "..", "", "%2e", "%2E%2e", "b%20", "%7E", "c", "..;", ".;x", ";x", "%2e;",
        ];
        let mut checked = 0;
        for x in pieces {
            for y in pieces {
                for z in pieces {
                    for trail in ["", "/"] {
                        let raw = format!("/{x}/{y}/{z}{trail}");
                        for merge in [true, false] {
                            if let Ok(once) = normalize_path(&raw, merge) {
                                let twice = normalize_path(&once, merge);
                                assert_eq!(twice.as_deref(), Ok(once.as_str()), "{raw}");
                                assert!(
                                    !once
                                        .split('/')
                                        .any(|s| s == "." || s == ".." || is_dot_with_params(s)),
                                    "{raw} -> {once}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} cases normalised");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Paths built from pieces that stress the normaliser.
    fn raw_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just("%41".to_owned()),
            Just("%20".to_owned()),
            Just("%C3%A9".to_owned()),
            Just("..;".to_owned()),
            Just(".;x=1".to_owned()),
            Just("%2e%2E;".to_owned()),
            Just(".%2e;jsessionid=1".to_owned()),
            Just("..%3B".to_owned()),
            Just("a;b".to_owned()),
            "[a-zA-Z0-9._~-]{1,6}",
            "[.;]{1,4}",
            "[!$&'()*+,;=:@]{1,3}",
        ];
        (prop::collection::vec(piece, 0..8), any::<bool>()).prop_map(|(pieces, trailing)| {
            let mut p = String::from("/");
            p.push_str(&pieces.join("/"));
            if trailing {
                p.push('/');
            }
            p
        })
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_the_full_algorithm(raw in raw_path(), merge in any::<bool>()) {
            prop_assert_eq!(normalize_path(&raw, merge), normalize_full(&raw, merge));
        }

        #[test]
        fn normalising_twice_changes_nothing(raw in raw_path(), merge in any::<bool>()) {
            if let Ok(once) = normalize_path(&raw, merge) {
                prop_assert_eq!(normalize_path(&once, merge), Ok(once.clone()));
            }
        }

        #[test]
        fn output_has_no_dot_segments_and_starts_with_a_slash(raw in raw_path(), merge in any::<bool>()) {
            if let Ok(out) = normalize_path(&raw, merge) {
                prop_assert!(out.starts_with('/'));
                prop_assert!(
                    !out.split('/').any(|s| s == "." || s == ".." || is_dot_with_params(s)),
                    "{} -> {}", raw, out
                );
                prop_assert!(!out.to_ascii_lowercase().contains("%2e"), "{} -> {}", raw, out);
                if merge {
                    prop_assert!(!out.contains("//"), "{} -> {}", raw, out);
                }
            }
        }

        #[test]
        fn arbitrary_input_gives_ascii_rooted_paths_or_an_error(raw in "\\PC{0,64}") {
            if let Ok(out) = normalize_path(&raw, true) {
                prop_assert!(out.starts_with('/') && out.is_ascii(), "{:?} -> {:?}", raw, out);
            }
        }
    }
}
