//! Reading an OpenAPI document (YAML or JSON) and resolving its `$ref`s.
//!
//! A `$ref` may point into the same document (`#/components/schemas/Pet`)
//! or into a file next to it or below it (`common.yaml#/Error`). Anything
//! else — `http:`/`https:` and every other scheme, absolute paths, `..` —
//! is refused: the gateway never fetches a contract from the network, and
//! a document cannot make it read files outside its own directory. Refs are
//! inlined; a ref that leads back to itself (a recursive schema) is
//! reported, as the inlined form would be infinite.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::Finding;

/// Largest document file read.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Deepest chain of refs followed.
const MAX_REF_DEPTH: usize = 64;
/// Most JSON values in the inlined document: refs that fan out (A uses B
/// twice, B uses C twice, …) could otherwise grow it exponentially.
#[cfg(not(test))]
const MAX_NODES: usize = 2_000_000;
#[cfg(test)]
const MAX_NODES: usize = 100_000;

/// The OpenAPI version family of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.0.x: schemas are an extended subset of JSON Schema draft 4/5.
    V30,
    /// 3.1.x: schemas are JSON Schema 2020-12.
    V31,
}

/// A document with every `$ref` inlined.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's file.
    pub path: PathBuf,
    /// Its version family.
    pub version: Version,
    /// The resolved tree.
    pub root: Value,
}

/// Parses `text` as JSON (`.json` files) or YAML (everything else).
pub fn parse(path: &Path, text: &str) -> Result<Value, Finding> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        return serde_json::from_str(text).map_err(|e| Finding {
            file: path.to_path_buf(),
            pointer: String::new(),
            message: format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
            fatal: true,
        });
    }
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| Finding {
        file: path.to_path_buf(),
        pointer: String::new(),
        message: format!("invalid YAML: {e}"),
        fatal: true,
    })?;
    yaml_to_json(yaml).map_err(|message| Finding {
        file: path.to_path_buf(),
        pointer: String::new(),
        message,
        fatal: true,
    })
}

fn yaml_to_json(v: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                // Response codes are often written unquoted (`200:`).
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => return Err("a mapping key is not a string or number".to_owned()),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

fn read(path: &Path) -> Result<Value, Finding> {
    let finding = |message: String| Finding {
        file: path.to_path_buf(),
        pointer: String::new(),
        message,
        fatal: true,
    };
    let meta = std::fs::metadata(path).map_err(|e| finding(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(finding(format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| finding(format!("cannot read: {e}")))?;
    parse(path, &text)
}

/// Escapes one JSON pointer token.
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Loads the document at `path` and inlines its refs. Every refused or
/// unresolvable ref is a finding; the document is returned only when there
/// are none that are fatal.
pub fn load(path: &Path) -> Result<Document, Vec<Finding>> {
    let root = read(path).map_err(|f| vec![f])?;
    let version = match root.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v == "3.0" => Version::V30,
        Some(v) if v.starts_with("3.1.") || v == "3.1" => Version::V31,
        other => {
            return Err(vec![Finding {
                file: path.to_path_buf(),
                pointer: "/openapi".to_owned(),
                message: format!(
                    "unsupported OpenAPI version {} (3.0.x and 3.1.x are supported)",
                    other.map_or_else(|| "(none)".to_owned(), |v| format!("`{v}`"))
                ),
                fatal: true,
            }]);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut resolver = Resolver {
        base,
        files: HashMap::from([(path.to_path_buf(), root.clone())]),
        findings: Vec::new(),
        nodes: 0,
    };
    let mut stack = Vec::new();
    let resolved = resolver.walk(&root, path, "", &mut stack);
    if resolver.findings.iter().any(|f| f.fatal) {
        return Err(resolver.findings);
    }
    Ok(Document {
        path: path.to_path_buf(),
        version,
        root: resolved,
    })
}

struct Resolver {
    /// The root document's directory: refs may not leave it.
    base: PathBuf,
    files: HashMap<PathBuf, Value>,
    findings: Vec<Finding>,
    /// Values produced so far (see [`MAX_NODES`]).
    nodes: usize,
}

/// Maps whose keys are names chosen by the author (a property called
/// `example`, a header called `x-trace`), not keywords.
const NAMED_MAPS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "schemas",
    "responses",
    "parameters",
    "requestBodies",
    "headers",
    "securitySchemes",
    "links",
    "callbacks",
    "pathItems",
    "paths",
    "webhooks",
    "content",
    "encoding",
];

/// Keys whose values are data, not OpenAPI objects: never searched for refs.
fn is_data_key(k: &str) -> bool {
    // Not `default`: under `responses` it is a response, not a value.
    k == "example" || k == "examples" || k == "enum" || k == "const" || k.starts_with("x-")
}

impl Resolver {
    fn refuse(&mut self, file: &Path, pointer: &str, message: String) -> Value {
        self.findings.push(Finding {
            file: file.to_path_buf(),
            pointer: pointer.to_owned(),
            message,
            fatal: true,
        });
        Value::Null
    }

    fn walk(
        &mut self,
        v: &Value,
        file: &Path,
        pointer: &str,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> Value {
        self.walk_in(v, file, pointer, stack, false)
    }

    /// `names`: `v` is a map of author-chosen names (see [`NAMED_MAPS`]).
    fn walk_in(
        &mut self,
        v: &Value,
        file: &Path,
        pointer: &str,
        stack: &mut Vec<(PathBuf, String)>,
        names: bool,
    ) -> Value {
        self.nodes += 1;
        if self.nodes == MAX_NODES {
            return self.refuse(
                file,
                pointer,
                format!("the document with its refs inlined exceeds {MAX_NODES} values"),
            );
        }
        if self.nodes > MAX_NODES {
            return Value::Null;
        }
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let target = self.follow(r, file, pointer, stack);
                    let siblings: Map<String, Value> = map
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "$ref" | "description" | "summary"))
                        .map(|(k, v)| {
                            let p = format!("{pointer}/{}", escape_token(k));
                            (k.clone(), self.walk(v, file, &p, stack))
                        })
                        .collect();
                    if siblings.is_empty() {
                        return target;
                    }
                    // 3.1 schemas may put keywords beside `$ref`: both apply.
                    let mut out = siblings;
                    out.insert("allOf".to_owned(), Value::Array(vec![target]));
                    return Value::Object(out);
                }
                let mut out = Map::new();
                for (k, child) in map {
                    let value = if !names && is_data_key(k) {
                        child.clone()
                    } else {
                        let p = format!("{pointer}/{}", escape_token(k));
                        let named = !names && NAMED_MAPS.contains(&k.as_str());
                        self.walk_in(child, file, &p, stack, named)
                    };
                    out.insert(k.clone(), value);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.walk(item, file, &format!("{pointer}/{i}"), stack))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn follow(
        &mut self,
        reference: &str,
        file: &Path,
        pointer: &str,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> Value {
        let (file_part, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let target_file = if file_part.is_empty() {
            file.to_path_buf()
        } else {
            match self.local_file(file, file_part) {
                Some(p) => p,
                None => {
                    return self.refuse(
                        file,
                        pointer,
                        format!(
                            "$ref `{reference}` refused: only refs within the document or to files next to it are followed (no remote, absolute or `..` refs)"
                        ),
                    );
                }
            }
        };
        let fragment = percent_encoding::percent_decode_str(fragment)
            .decode_utf8_lossy()
            .into_owned();
        if !fragment.is_empty() && !fragment.starts_with('/') {
            return self.refuse(
                file,
                pointer,
                format!("$ref `{reference}`: only JSON pointer fragments (`#/…`) are supported"),
            );
        }
        let key = (target_file.clone(), fragment.clone());
        if stack.contains(&key) {
            return self.refuse(
                file,
                pointer,
                format!("$ref `{reference}` is recursive; recursive schemas are not supported"),
            );
        }
        if stack.len() >= MAX_REF_DEPTH {
            return self.refuse(
                file,
                pointer,
                format!("$ref `{reference}`: more than {MAX_REF_DEPTH} nested refs"),
            );
        }
        if !self.files.contains_key(&target_file) {
            match read(&target_file) {
                Ok(v) => {
                    self.files.insert(target_file.clone(), v);
                }
                Err(f) => {
                    return self.refuse(
                        file,
                        pointer,
                        format!("$ref `{reference}`: {}", f.message),
                    );
                }
            }
        }
        let target = self
            .files
            .get(&target_file)
            .and_then(|doc| doc.pointer(&fragment))
            .cloned();
        let Some(target) = target else {
            return self.refuse(
                file,
                pointer,
                format!("$ref `{reference}` points to nothing"),
            );
        };
        stack.push(key);
        let out = self.walk(&target, &target_file, &fragment, stack);
        stack.pop();
        out
    }

    /// The file a ref names, if it is a relative path that stays in the
    /// document's directory.
    fn local_file(&self, from: &Path, name: &str) -> Option<PathBuf> {
        if name.contains(':') || name.contains('\\') || name.starts_with('/') {
            return None;
        }
        let decoded = percent_encoding::percent_decode_str(name)
            .decode_utf8()
            .ok()?
            .into_owned();
        let rel = Path::new(&decoded);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let dir = from.parent().unwrap_or(Path::new(""));
        let joined = dir.join(rel);
        joined.starts_with(&self.base).then_some(joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// S0 uses S1 twice, S1 uses S2 twice, …: 2^30 copies once inlined.
    fn fan_out() -> String {
        let mut doc = String::from("openapi: 3.1.0\ncomponents:\n  schemas:\n");
        for i in 0..30 {
            let next = format!("{{$ref: '#/components/schemas/S{}'}}", i + 1);
            doc.push_str(&format!("    S{i}: {{allOf: [{next}, {next}]}}\n"));
        }
        doc.push_str("    S30: {type: string}\n");
        doc
    }

    #[test]
    fn refs_are_inlined_and_remote_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "common.yaml",
            "Error:\n  type: object\n  properties:\n    code: {type: integer}\n",
        );
        let cases: [(&str, &str, Option<&str>); 8] = [
            (
                "local and sibling refs",
                "openapi: 3.0.3\ncomponents:\n  schemas:\n    A: {type: string}\n    B: {$ref: '#/components/schemas/A'}\n    E: {$ref: 'common.yaml#/Error'}\n",
                None,
            ),
            (
                "properties named like keywords",
                "openapi: 3.0.3\ncomponents:\n  schemas:\n    A: {type: string}\n    B: {$ref: '#/components/schemas/A'}\n    E: {$ref: 'common.yaml#/Error'}\n    P: {type: object, properties: {example: {$ref: '#/components/schemas/A'}, x-id: {$ref: '#/components/schemas/A'}}}\n",
                None,
            ),
            (
                "refs that fan out exponentially",
                &fan_out(),
                Some("/components/schemas/S"),
            ),
            (
                "https ref",
                "openapi: 3.1.0\ncomponents:\n  schemas:\n    A: {$ref: 'https://example.com/a.json'}\n",
                Some("/components/schemas/A"),
            ),
            (
                "parent directory",
                "openapi: 3.1.0\ncomponents:\n  schemas:\n    A: {$ref: '../a.yaml#/A'}\n",
                Some("/components/schemas/A"),
            ),
            (
                "absolute path",
                "openapi: 3.1.0\ncomponents:\n  schemas:\n    A: {$ref: '/etc/passwd'}\n",
                Some("/components/schemas/A"),
            ),
            (
                "recursive",
                "openapi: 3.1.0\ncomponents:\n  schemas:\n    A: {type: object, properties: {next: {$ref: '#/components/schemas/A'}}}\n",
                Some("/components/schemas/A/properties/next"),
            ),
            (
                "dangling",
                "openapi: 3.0.0\ncomponents:\n  schemas:\n    A: {$ref: '#/components/schemas/Nope'}\n",
                Some("/components/schemas/A"),
            ),
        ];
        for (name, text, refused_at) in cases {
            let path = write(dir.path(), "doc.yaml", text);
            match (load(&path), refused_at) {
                (Ok(doc), None) => {
                    let text = doc.root.to_string();
                    assert!(!text.contains("$ref"), "{name}: {text}");
                    assert_eq!(
                        doc.root.pointer("/components/schemas/B/type"),
                        Some(&Value::from("string")),
                        "{name}"
                    );
                    assert_eq!(
                        doc.root
                            .pointer("/components/schemas/E/properties/code/type"),
                        Some(&Value::from("integer")),
                        "{name}"
                    );
                }
                (Err(findings), Some(pointer)) => {
                    assert!(
                        findings
                            .iter()
                            .any(|f| f.pointer.starts_with(pointer) && f.fatal),
                        "{name}: {findings:?}"
                    );
                }
                (got, want) => panic!("{name}: got {got:?}, want refusal at {want:?}"),
            }
        }
    }

    #[test]
    fn versions_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "yaml 3.0",
                "a.yaml",
                "openapi: 3.0.3\npaths: {}\n",
                Some(Version::V30),
            ),
            (
                "json 3.1",
                "a.json",
                r#"{"openapi": "3.1.0", "paths": {}}"#,
                Some(Version::V31),
            ),
            ("swagger 2", "b.yaml", "swagger: '2.0'\n", None),
            ("bad json", "c.json", "{", None),
            (
                "unquoted status keys",
                "d.yaml",
                "openapi: 3.0.0\nx:\n  200: ok\n",
                Some(Version::V30),
            ),
        ];
        for (name, file, text, want) in cases {
            let path = write(dir.path(), file, text);
            assert_eq!(load(&path).ok().map(|d| d.version), want, "{name}");
        }
    }
}
