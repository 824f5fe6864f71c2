//! OpenAPI schemas as JSON Schema, compiled with the `jsonschema` crate.
//!
//! 3.1 schemas are JSON Schema 2020-12 and are used as they are. 3.0
//! schemas are rewritten first: `nullable: true` adds `"null"` to `type`
//! (and to `enum`), boolean `exclusiveMinimum`/`exclusiveMaximum` become
//! the numeric 2020-12 form. Annotation keywords (`example`, `xml`,
//! `discriminator`, `externalDocs`, `readOnly`, `writeOnly`) are ignored by
//! the validator either way. `format` is an annotation, not checked.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::load::Version;

/// Keywords whose value is one schema.
const ONE: &[&str] = &[
    "items",
    "not",
    "additionalProperties",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
];
/// Keywords whose value is a list of schemas.
const LIST: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is a map of schemas.
const MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "dependentSchemas",
];

/// A 3.0 schema rewritten as JSON Schema 2020-12; a 3.1 schema unchanged.
pub fn to_json_schema(schema: &Value, version: Version) -> Value {
    match version {
        Version::V31 => schema.clone(),
        Version::V30 => convert30(schema),
    }
}

fn convert30(v: &Value) -> Value {
    let Value::Object(map) = v else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, child) in map {
        let converted = if ONE.contains(&k.as_str()) {
            convert30(child)
        } else if LIST.contains(&k.as_str()) {
            match child {
                Value::Array(items) => Value::Array(items.iter().map(convert30).collect()),
                other => other.clone(),
            }
        } else if MAP.contains(&k.as_str()) {
            match child {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(name, s)| (name.clone(), convert30(s)))
                        .collect(),
                ),
                other => other.clone(),
            }
        } else {
            child.clone()
        };
        out.insert(k.clone(), converted);
    }
    if out.remove("nullable") == Some(Value::Bool(true)) {
        match out.get_mut("type") {
            Some(Value::String(t)) => {
                let t = Value::String(std::mem::take(t));
                out.insert("type".to_owned(), Value::Array(vec![t, "null".into()]));
            }
            Some(Value::Array(ts)) if !ts.contains(&Value::from("null")) => ts.push("null".into()),
            _ => {}
        }
        if let Some(Value::Array(values)) = out.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match out.get(flag) {
            Some(Value::Bool(true)) => {
                if let Some(limit) = out.remove(bound) {
                    out.insert(flag.to_owned(), limit);
                } else {
                    out.remove(flag);
                }
            }
            Some(Value::Bool(false)) => {
                out.remove(flag);
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// Compiles a (converted) schema as JSON Schema 2020-12, unless it names
/// another dialect in `$schema`.
pub fn compile(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_oh_schemas_become_json_schema() {
        let cases = [
            (
                "nullable string",
                json!({"type": "string", "nullable": true}),
                vec![(json!("a"), true), (json!(null), true), (json!(1), false)],
            ),
            (
                "nullable enum",
                json!({"type": "string", "enum": ["a"], "nullable": true}),
                vec![(json!("a"), true), (json!(null), true), (json!("b"), false)],
            ),
            (
                "not nullable",
                json!({"type": "string"}),
                vec![(json!(null), false)],
            ),
            (
                "exclusive minimum",
                json!({"type": "integer", "minimum": 1, "exclusiveMinimum": true}),
                vec![(json!(1), false), (json!(2), true)],
            ),
            (
                "nested nullable",
                json!({"type": "object", "properties": {"tag": {"type": "string", "nullable": true}},
                       "items": {"type": "integer"}}),
                vec![(json!({"tag": null}), true), (json!({"tag": 5}), false)],
            ),
            (
                "nullable inside allOf",
                json!({"allOf": [{"type": "integer", "nullable": true}]}),
                vec![(json!(null), true), (json!("x"), false)],
            ),
        ];
        for (name, schema, instances) in cases {
            let converted = to_json_schema(&schema, Version::V30);
            let validator = compile(&converted).unwrap();
            for (instance, ok) in instances {
                assert_eq!(validator.is_valid(&instance), ok, "{name}: {instance}");
            }
        }
        // 3.1 keeps `nullable` as an unknown (ignored) keyword.
        let same = json!({"type": "string", "nullable": true});
        assert_eq!(to_json_schema(&same, Version::V31), same);
    }
}
