//! Strict JSON parsing for bodies that a schema checks: a repeated object
//! key, at any depth, is refused.
//!
//! Parsers disagree on `{"a": 1, "a": 2}`: serde_json keeps the last value,
//! many backends keep the first. The schema would then pass a value the
//! backend never reads, so a body with a duplicated key is not forwarded.
//! Keys are compared after unescaping (`"a"` and `"\u0061"` are the same
//! key). One pass builds the `serde_json::Value`; nesting is bounded by
//! serde_json's recursion limit (128).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body could not be parsed strictly.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all (syntax, trailing data, too deep).
    #[error("request body is not valid JSON")]
    Syntax(#[source] serde_json::Error),
    /// An object repeats a key; the JSON pointer of the repeated member.
    #[error("duplicate object key at `{0}`")]
    DuplicateKey(String),
}

/// Parses `body` into a value, refusing repeated object keys.
pub fn parse_strict(body: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = ValueSeed {
        at: &Place::Root,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => match duplicate.into_inner() {
            Some(pointer) => Err(JsonError::DuplicateKey(pointer)),
            None => Err(JsonError::Syntax(e)),
        },
    }
}

/// Where a value sits in the document, as a chain back to the root; turned
/// into a JSON pointer only when a duplicate is found.
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl Place<'_> {
    fn pointer(&self) -> String {
        let mut parts = Vec::new();
        let mut at = self;
        loop {
            match at {
                Place::Root => break,
                Place::Key(parent, key) => {
                    parts.push(key.replace('~', "~0").replace('/', "~1"));
                    at = parent;
                }
                Place::Index(parent, i) => {
                    parts.push(i.to_string());
                    at = parent;
                }
            }
        }
        let mut out = String::new();
        for part in parts.iter().rev() {
            out.push('/');
            out.push_str(part);
        }
        out
    }
}

#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    at: &'a Place<'a>,
    /// Set to the repeated member's pointer before the parse is aborted, so
    /// the caller tells a duplicate from a syntax error without reading
    /// error text.
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = Place::Index(self.at, items.len());
            let seed = ValueSeed {
                at: &at,
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => items.push(v),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                let pointer = Place::Key(self.at, &key).pointer();
                let err = de::Error::custom(format_args!("duplicate object key at `{pointer}`"));
                *self.duplicate.borrow_mut() = Some(pointer);
                return Err(err);
            }
            let at = Place::Key(self.at, &key);
            let value = map.next_value_seed(ValueSeed {
                at: &at,
                duplicate: self.duplicate,
            })?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("flat ok", r#"{"a": 1, "b": 2}"#, None),
            ("flat duplicate", r#"{"a": 1, "a": 2}"#, Some("/a")),
            (
                "duplicate after others",
                r#"{"a": 1, "b": 2, "a": 3}"#,
                Some("/a"),
            ),
            ("escaped equal key", r#"{"a": 1, "\u0061": 2}"#, Some("/a")),
            (
                "nested",
                r#"{"x": {"y": {"k": 1, "k": 2}}}"#,
                Some("/x/y/k"),
            ),
            (
                "arrays of objects",
                r#"{"items": [{"id": 1}, {"id": 2, "id": 3}]}"#,
                Some("/items/1/id"),
            ),
            (
                "top-level array",
                r#"[{}, [{"q": 1, "q": 1}]]"#,
                Some("/1/0/q"),
            ),
            (
                "pointer escapes ~ and /",
                r#"{"a/b": {"c~d": 1, "c~d": 2}}"#,
                Some("/a~1b/c~0d"),
            ),
            ("empty key twice", r#"{"": 1, "": 2}"#, Some("/")),
            (
                "same key in sibling objects ok",
                r#"{"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 3}, {"k": 4}]}"#,
                None,
            ),
            ("same key at two depths ok", r#"{"k": {"k": 1}}"#, None),
            ("keys differing by case ok", r#"{"a": 1, "A": 2}"#, None),
        ];
        for (name, body, want) in cases {
            match (parse_strict(body.as_bytes()), want) {
                (Ok(_), None) => {}
                (Err(JsonError::DuplicateKey(got)), Some(want)) => {
                    assert_eq!(got, *want, "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want duplicate {want:?}"),
            }
        }
    }

    #[test]
    fn values_match_serde_json() {
        let cases = [
            (
                "scalars",
                r#"[null, true, false, 0, -1, 18446744073709551615, 1.5, "s\n"]"#,
            ),
            ("object", r#"{"a": {"b": [1, {"c": "d"}]}, "e": 1e300}"#),
            ("bare string", r#""x""#),
            ("empty", "{}"),
        ];
        for (name, body) in cases {
            let want: Result<Value, _> = serde_json::from_str(body);
            assert_eq!(parse_strict(body.as_bytes()).ok(), want.ok(), "{name}");
        }
    }

    #[test]
    fn syntax_errors_are_not_duplicates() {
        let deep_ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let cases: [(&str, &[u8], bool); 6] = [
            ("not json", b"{not json", false),
            ("trailing data", br#"{"a": 1} x"#, false),
            ("truncated", br#"{"a": 1, "b""#, false),
            ("too deep", too_deep.as_bytes(), false),
            ("deep but allowed", deep_ok.as_bytes(), true),
            ("invalid utf-8 in a key", b"{\"\xff\": 1}", false),
        ];
        for (name, body, ok) in cases {
            match parse_strict(body) {
                Ok(_) => assert!(ok, "{name}: accepted"),
                Err(JsonError::Syntax(_)) => assert!(!ok, "{name}: refused"),
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
    }
}
