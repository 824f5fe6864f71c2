//! Path, query and header parameters checked against their schemas.
//!
//! Values arrive as text; they are read according to the schema's `type`
//! (`integer`, `number`, `boolean`, `string`, or an `array` of those in the
//! default styles: `form` for the query, exploded or comma-separated, and
//! `simple` for path and header) and then validated with the compiled
//! schema, so `enum`, `pattern`, `minimum`, `maxLength`… all apply. A
//! scalar query parameter given twice is refused: the backend might read
//! the other copy. Messages name the parameter and the failed keyword,
//! never the value (a header may carry something secret).

use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

use crate::validate::Invalid;
use crate::validate::SchemaError;

/// Where a parameter is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A path template segment.
    Path,
    /// The query string.
    Query,
    /// A request header.
    Header,
}

impl Location {
    /// The OpenAPI `in` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

/// How a text value is read into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// As text.
    String,
    /// As a whole number.
    Integer,
    /// As a number.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// The value's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Scalar(Kind),
    /// A list; `explode` (query only): repeated `name=v`, else `v1,v2`.
    Array {
        /// The items' kind.
        items: Kind,
        /// Repeated parameters rather than a comma-separated value.
        explode: bool,
    },
}

/// One compiled parameter.
#[derive(Debug, Clone)]
pub struct ParamRule {
    /// Its name (lower-case for headers).
    pub name: String,
    /// Where it is read from.
    pub location: Location,
    /// Whether it must be present.
    pub required: bool,
    /// Its place in the document (a JSON pointer).
    pub pointer: String,
    /// How its value is read.
    pub shape: Shape,
    /// Its schema.
    pub schema: Option<Arc<jsonschema::Validator>>,
}

/// The kind named by a schema's `type` (`["integer", "null"]` counts as
/// `integer`); `None` for an object or an unknown type.
pub fn kind_of(schema: &Value) -> Option<Kind> {
    let t = match schema.get("type") {
        None => return Some(Kind::String),
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        Some(_) => return None,
    };
    match t {
        "string" => Some(Kind::String),
        "integer" => Some(Kind::Integer),
        "number" => Some(Kind::Number),
        "boolean" => Some(Kind::Boolean),
        _ => None,
    }
}

/// Whether a schema's `type` is `array`.
pub fn is_array(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "array",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
        _ => false,
    }
}

fn read(text: &str, kind: Kind) -> Result<Value, &'static str> {
    match kind {
        Kind::String => Ok(Value::String(text.to_owned())),
        Kind::Integer => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .map_err(|_| "is not an integer"),
        Kind::Number => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or("is not a number"),
        Kind::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("is not a boolean (true or false)"),
        },
    }
}

fn decode(text: &str, plus_is_space: bool) -> Option<String> {
    let spaced;
    let text = if plus_is_space && text.contains('+') {
        spaced = text.replace('+', " ");
        spaced.as_str()
    } else {
        text
    };
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A query string that is not UTF-8 once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the query string is not UTF-8 once decoded")]
pub struct NotUtf8;

/// A parsed query string: decoded `(name, value)` pairs.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, NotUtf8> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((
            decode(k, true).ok_or(NotUtf8)?,
            decode(v, true).ok_or(NotUtf8)?,
        ));
    }
    Ok(out)
}

impl ParamRule {
    fn fail(&self, why: &str) -> Invalid {
        Invalid::Parameter(vec![SchemaError {
            pointer: self.pointer.clone(),
            message: format!("{} parameter `{}` {why}", self.location.as_str(), self.name),
        }])
    }

    /// Checks this parameter of a request: `path` holds the template
    /// parameters, `query` the decoded query pairs.
    pub fn check(
        &self,
        path: &[(String, String)],
        query: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<(), Invalid> {
        let raw: Vec<String> = match self.location {
            Location::Path => path
                .iter()
                .filter(|(k, _)| *k == self.name)
                .map(|(_, v)| decode(v, false).ok_or_else(|| self.fail("is not UTF-8")))
                .collect::<Result<_, _>>()?,
            Location::Query => query
                .iter()
                .filter(|(k, _)| *k == self.name)
                .map(|(_, v)| v.clone())
                .collect(),
            Location::Header => headers
                .get_all(self.name.as_str())
                .iter()
                .map(|v| {
                    v.to_str()
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| self.fail("is not visible ASCII"))
                })
                .collect::<Result<_, _>>()?,
        };
        if raw.is_empty() {
            return if self.required {
                Err(self.fail("is required"))
            } else {
                Ok(())
            };
        }
        let value = match self.shape {
            Shape::Scalar(kind) => {
                if raw.len() > 1 {
                    return Err(self.fail("is given more than once"));
                }
                read(&raw[0], kind).map_err(|why| self.fail(why))?
            }
            Shape::Array { items, explode } => {
                let parts: Vec<&str> = if explode && self.location == Location::Query {
                    raw.iter().map(String::as_str).collect()
                } else {
                    if raw.len() > 1 {
                        return Err(self.fail("is given more than once"));
                    }
                    raw[0].split(',').map(str::trim).collect()
                };
                Value::Array(
                    parts
                        .into_iter()
                        .map(|p| read(p, items))
                        .collect::<Result<_, _>>()
                        .map_err(|why| self.fail(&format!("has an item that {why}")))?,
                )
            }
        };
        if let Some(schema) = &self.schema
            && let Some(e) = schema.iter_errors(&value).next()
        {
            let keyword = e
                .schema_path()
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or("schema")
                .to_owned();
            return Err(self.fail(&format!("does not match its schema (`{keyword}`)")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn rule(location: Location, shape: Shape, required: bool, schema: Value) -> ParamRule {
        ParamRule {
            name: "p".to_owned(),
            location,
            required,
            pointer: "/paths/~1x/get/parameters/0".to_owned(),
            shape,
            schema: super::super::schema::compile(&schema).ok(),
        }
    }

    #[test]
    fn parameters_are_read_and_validated() {
        let int = rule(
            Location::Path,
            Shape::Scalar(Kind::Integer),
            true,
            json!({"type": "integer", "minimum": 1}),
        );
        let status = rule(
            Location::Query,
            Shape::Array {
                items: Kind::String,
                explode: true,
            },
            true,
            json!({"type": "array", "items": {"type": "string", "enum": ["available", "sold"]}}),
        );
        let csv = rule(
            Location::Query,
            Shape::Array {
                items: Kind::Integer,
                explode: false,
            },
            false,
            json!({"type": "array", "items": {"type": "integer"}}),
        );
        let header = rule(
            Location::Header,
            Shape::Scalar(Kind::String),
            true,
            json!({"type": "string", "pattern": "^[a-z]{3}$"}),
        );
        let flag = rule(
            Location::Query,
            Shape::Scalar(Kind::Boolean),
            false,
            json!({"type": "boolean"}),
        );
        type Case<'a> = (
            &'a str,
            &'a ParamRule,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
        );
        let cases: [Case<'_>; 14] = [
            ("integer ok", &int, &[("p", "7")], None),
            (
                "integer text",
                &int,
                &[("p", "seven")],
                Some("is not an integer"),
            ),
            (
                "integer below minimum",
                &int,
                &[("p", "0")],
                Some("`minimum`"),
            ),
            ("integer missing", &int, &[], Some("is required")),
            ("percent-decoded path", &int, &[("p", "%37")], None),
            (
                "enum ok, exploded",
                &status,
                &[("p", "available"), ("p", "sold")],
                None,
            ),
            ("enum refused", &status, &[("p", "pending")], Some("`enum`")),
            ("required array missing", &status, &[], Some("is required")),
            ("comma list", &csv, &[("p", "1,2,3")], None),
            (
                "comma list bad item",
                &csv,
                &[("p", "1,x")],
                Some("has an item that is not an integer"),
            ),
            ("header pattern ok", &header, &[("p", "abc")], None),
            (
                "header pattern refused",
                &header,
                &[("p", "ABCD")],
                Some("`pattern`"),
            ),
            (
                "boolean text",
                &flag,
                &[("p", "yes")],
                Some("is not a boolean"),
            ),
            (
                "scalar given twice",
                &flag,
                &[("p", "true"), ("p", "false")],
                Some("more than once"),
            ),
        ];
        for (name, rule, values, want) in cases {
            let pairs: Vec<(String, String)> = values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut headers = HeaderMap::new();
            for (k, v) in values {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.append(k, v);
                }
            }
            let got = rule.check(&pairs, &pairs, &headers);
            match (got, want) {
                (Ok(()), None) => {}
                (Err(Invalid::Parameter(errors)), Some(text)) => {
                    assert_eq!(errors[0].pointer, "/paths/~1x/get/parameters/0", "{name}");
                    assert!(
                        errors[0].message.contains(text),
                        "{name}: {}",
                        errors[0].message
                    );
                    assert!(!errors[0].message.contains("ABCD"), "{name}: value echoed");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn query_strings_are_decoded() {
        let cases: [(&str, Option<&str>, Option<Vec<(&str, &str)>>); 4] = [
            ("none", None, Some(vec![])),
            (
                "plus and percent",
                Some("q=a+b%21&x"),
                Some(vec![("q", "a b!"), ("x", "")]),
            ),
            (
                "empty pairs skipped",
                Some("&&a=1&"),
                Some(vec![("a", "1")]),
            ),
            ("not utf-8", Some("a=%ff"), None),
        ];
        for (name, query, want) in cases {
            let want: Option<Vec<(String, String)>> = want.map(|w| {
                w.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            });
            assert_eq!(query_pairs(query).ok(), want, "{name}");
        }
    }
}
