//! The configuration reference (`docs/src/reference/`) against the code.
//!
//! `every_config_key_is_documented` reads the Rust sources of `src/config/`
//! with `syn`, walks the serde types from the two file roots (`ConfigFile`
//! for `gatehouse.toml`, `PolicyFile` for policy files), and collects every
//! key they accept: field names after `rename` / `rename_all`, every
//! `alias`, the fields of `flatten`ed structs in their parent's place, none
//! of `skip` / `skip_deserializing`. Each key must be documented on the
//! reference page of its section (its top-level table: `[server]` →
//! `server.md` or `server-*.md`; keys outside any table → `index.md`) as a
//! code span in the first column of a table row, or in a heading:
//! `` | `max_body` | … ``. A nested key may be written as its dotted path or
//! the end of it (`dns.timeout`, or a bare `timeout`; `parent[].key` for an
//! array of tables); write it qualified when another table of the section
//! has a key of the same name, so one row cannot pass for both.
//!
//! `shipped_and_documented_configs_are_accepted` goes the other way: the
//! example configs and every TOML block in the docs parse as the real types
//! (which deny unknown keys), so no documented key is a typo.
//! `doc_links_resolve` checks that every relative link between the Markdown
//! pages (README.md, docs/src/) names an existing file and heading.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use syn::meta::ParseNestedMeta;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One field of a config struct, as serde reads it.
struct Field {
    /// The key (after renames).
    key: String,
    /// Other accepted spellings.
    aliases: Vec<String>,
    /// The field's Rust type.
    ty: syn::Type,
    /// `#[serde(flatten)]`: its type's keys sit in the parent.
    flatten: bool,
}

/// A type deriving `Deserialize` in `src/config/`.
enum Def {
    /// A struct with named fields: keys.
    Struct(Vec<Field>),
    /// An `untagged` enum: whatever its variants' types accept.
    Untagged(Vec<syn::Type>),
    /// An enum of unit variants: values, not keys.
    Values,
}

struct Item {
    def: Def,
    file: PathBuf,
}

/// Every file below `dir` whose name ends in `.{ext}`.
fn files_below(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_below(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn derives_deserialize(attrs: &[syn::Attribute]) -> bool {
    let mut found = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        attr.parse_nested_meta(|meta| {
            if meta
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "Deserialize")
            {
                found = true;
            }
            Ok(())
        })
        .unwrap();
    }
    found
}

/// Consumes a serde attribute argument we do not care about.
fn skip_meta(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|m| skip_meta(&m))?;
    }
    Ok(())
}

fn lit_str(meta: &ParseNestedMeta) -> syn::Result<String> {
    Ok(meta.value()?.parse::<syn::LitStr>()?.value())
}

/// `rename = "x"` or `rename(deserialize = "x")` (likewise `rename_all`):
/// the name used when reading, if any.
fn deserialize_name(meta: &ParseNestedMeta) -> syn::Result<Option<String>> {
    if meta.input.peek(syn::Token![=]) {
        return lit_str(meta).map(Some);
    }
    let mut name = None;
    meta.parse_nested_meta(|m| {
        if m.path.is_ident("deserialize") {
            name = Some(lit_str(&m)?);
        } else {
            skip_meta(&m)?;
        }
        Ok(())
    })?;
    Ok(name)
}

#[derive(Default)]
struct SerdeAttrs {
    rename: Option<String>,
    rename_all: Option<String>,
    aliases: Vec<String>,
    flatten: bool,
    skip: bool,
    untagged: bool,
}

fn serde_attrs(attrs: &[syn::Attribute]) -> SerdeAttrs {
    let mut out = SerdeAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("rename") {
                out.rename = deserialize_name(&meta)?;
            } else if p.is_ident("rename_all") {
                out.rename_all = deserialize_name(&meta)?;
            } else if p.is_ident("alias") {
                out.aliases.push(lit_str(&meta)?);
            } else if p.is_ident("flatten") {
                out.flatten = true;
            } else if p.is_ident("skip") || p.is_ident("skip_deserializing") {
                out.skip = true;
            } else if p.is_ident("untagged") {
                out.untagged = true;
            } else {
                skip_meta(&meta)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("unreadable #[serde] attribute: {e}"));
    }
    out
}

/// serde's `rename_all` rules, for snake_case Rust field names.
fn apply_rename_all(rule: &str, field: &str) -> String {
    let words: Vec<&str> = field.split('_').filter(|w| !w.is_empty()).collect();
    let cap = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    match rule {
        "snake_case" | "lowercase" => field.to_string(),
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_uppercase(),
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.replace('_', "-").to_uppercase(),
        "camelCase" => words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { w.to_string() } else { cap(w) })
            .collect(),
        "PascalCase" => words.iter().map(|w| cap(w)).collect(),
        other => panic!("rename_all = {other:?}: teach tests/config_docs.rs this rule"),
    }
}

fn collect_items(items: &[syn::Item], file: &Path, defs: &mut BTreeMap<String, Item>) {
    for item in items {
        let (name, def) = match item {
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    collect_items(inner, file, defs);
                }
                continue;
            }
            syn::Item::Struct(s) if derives_deserialize(&s.attrs) => {
                let container = serde_attrs(&s.attrs);
                let syn::Fields::Named(named) = &s.fields else {
                    panic!(
                        "{}: struct {} is not a table of named fields; teach tests/config_docs.rs",
                        file.display(),
                        s.ident
                    );
                };
                let mut fields = Vec::new();
                for f in &named.named {
                    let attrs = serde_attrs(&f.attrs);
                    if attrs.skip {
                        continue;
                    }
                    let ident = f.ident.as_ref().unwrap().to_string();
                    let ident = ident.trim_start_matches("r#").to_string();
                    let key = attrs
                        .rename
                        .clone()
                        .unwrap_or_else(|| match &container.rename_all {
                            Some(rule) => apply_rename_all(rule, &ident),
                            None => ident.clone(),
                        });
                    fields.push(Field {
                        key,
                        aliases: attrs.aliases,
                        ty: f.ty.clone(),
                        flatten: attrs.flatten,
                    });
                }
                (s.ident.to_string(), Def::Struct(fields))
            }
            syn::Item::Enum(e) if derives_deserialize(&e.attrs) => {
                let container = serde_attrs(&e.attrs);
                let has_data = e.variants.iter().any(|v| !v.fields.is_empty());
                let def = if container.untagged {
                    let mut types = Vec::new();
                    for v in &e.variants {
                        match &v.fields {
                            syn::Fields::Unnamed(u) => {
                                types.extend(u.unnamed.iter().map(|f| f.ty.clone()))
                            }
                            syn::Fields::Unit => {}
                            syn::Fields::Named(_) => panic!(
                                "{}: enum {} has a struct variant; teach tests/config_docs.rs",
                                file.display(),
                                e.ident
                            ),
                        }
                    }
                    Def::Untagged(types)
                } else if has_data {
                    panic!(
                        "{}: enum {} is a tagged enum with data (its variant names are keys); \
                         teach tests/config_docs.rs",
                        file.display(),
                        e.ident
                    );
                } else {
                    Def::Values
                };
                (e.ident.to_string(), def)
            }
            _ => continue,
        };
        let previous = defs.insert(
            name.clone(),
            Item {
                def,
                file: file.to_path_buf(),
            },
        );
        assert!(
            previous.is_none(),
            "two config types are named {name}; the walk in tests/config_docs.rs goes by name"
        );
    }
}

/// The config types a field type refers to, each with whether a map lies
/// in between (its keys are names the user chooses, not config keys).
fn referenced(
    ty: &syn::Type,
    defs: &BTreeMap<String, Item>,
    via_map: bool,
    out: &mut Vec<(String, bool)>,
) {
    match ty {
        syn::Type::Path(p) => {
            let Some(last) = p.path.segments.last() else {
                return;
            };
            let name = last.ident.to_string();
            if defs.contains_key(&name) {
                out.push((name, via_map));
                return;
            }
            let is_map = name.ends_with("Map");
            if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                let types: Vec<&syn::Type> = args
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                for (i, t) in types.iter().enumerate() {
                    // A map's key type is the user's name, not a table.
                    if is_map && i + 1 < types.len() {
                        continue;
                    }
                    referenced(t, defs, via_map || is_map, out);
                }
            }
        }
        syn::Type::Array(a) => referenced(&a.elem, defs, via_map, out),
        syn::Type::Slice(s) => referenced(&s.elem, defs, via_map, out),
        syn::Type::Paren(p) => referenced(&p.elem, defs, via_map, out),
        syn::Type::Group(g) => referenced(&g.elem, defs, via_map, out),
        _ => {}
    }
}

/// A key the code accepts.
struct Key {
    /// The top-level table it belongs to ("" for keys outside any table).
    section: String,
    /// `upstream.retry.attempts`.
    path: String,
    /// `attempts` (or an alias).
    name: String,
    /// The struct that declares it, and its file.
    owner: String,
    file: PathBuf,
}

struct Walk<'a> {
    defs: &'a BTreeMap<String, Item>,
    keys: Vec<Key>,
    reached: BTreeSet<String>,
}

impl Walk<'_> {
    /// Every key of type `name` (a struct or untagged enum), at `prefix`.
    fn walk(&mut self, name: &str, section: Option<&str>, prefix: &str, depth: usize) {
        assert!(
            depth < 32,
            "config types nest too deep at {prefix} (a cycle?)"
        );
        self.reached.insert(name.to_string());
        let item = &self.defs[name];
        match &item.def {
            Def::Values => {}
            Def::Untagged(types) => {
                for ty in types {
                    let mut refs = Vec::new();
                    referenced(ty, self.defs, false, &mut refs);
                    for (inner, via_map) in refs {
                        let p = if via_map {
                            format!("{prefix}.<name>")
                        } else {
                            prefix.to_string()
                        };
                        self.walk(&inner, section, &p, depth + 1);
                    }
                }
            }
            Def::Struct(fields) => {
                for field in fields {
                    let mut refs = Vec::new();
                    referenced(&field.ty, self.defs, false, &mut refs);
                    if field.flatten {
                        for (inner, _) in refs {
                            self.walk(&inner, section, prefix, depth + 1);
                        }
                        continue;
                    }
                    let path = if prefix.is_empty() {
                        field.key.clone()
                    } else {
                        format!("{prefix}.{}", field.key)
                    };
                    // A table at the top level is a section of its own.
                    let own_section = match section {
                        Some(s) => s.to_string(),
                        None if refs.iter().any(|(r, _)| self.is_table(r)) => field.key.clone(),
                        None => String::new(),
                    };
                    for n in std::iter::once(&field.key).chain(&field.aliases) {
                        self.keys.push(Key {
                            section: own_section.clone(),
                            path: path.clone(),
                            name: n.clone(),
                            owner: name.to_string(),
                            file: item.file.clone(),
                        });
                    }
                    for (inner, via_map) in refs {
                        let p = if via_map {
                            format!("{path}.<name>")
                        } else {
                            path.clone()
                        };
                        self.walk(&inner, Some(&own_section), &p, depth + 1);
                    }
                }
            }
        }
    }

    fn is_table(&self, name: &str) -> bool {
        !matches!(self.defs[name].def, Def::Values)
    }
}

/// The keys a reference page documents: code spans in the first column of
/// table rows and in headings, outside code blocks, each as its dotted
/// segments (`[listener.tls]` → `listener`, `tls`; `certs[].cert` → `certs`,
/// `cert`; `plans.<plan>.rate` → `plans`, `rate`).
fn documented_keys(markdown: &str) -> BTreeSet<Vec<String>> {
    let mut keys = BTreeSet::new();
    let mut fence = false;
    for line in markdown.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let place = if t.starts_with('#') {
            t
        } else if let Some(row) = t.strip_prefix('|') {
            row.split('|').next().unwrap_or("")
        } else {
            continue;
        };
        for (i, span) in place.split('`').enumerate() {
            if i % 2 == 1 {
                keys.insert(key_segments(span));
            }
        }
    }
    keys
}

/// `upstream.set.<name>.weight` or `[[upstream.set]]` → `upstream`, `set`, …:
/// brackets and the names a user chooses (`<…>`) left out.
fn key_segments(text: &str) -> Vec<String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .replace("[]", "")
        .split('.')
        .filter(|s| !s.is_empty() && !s.starts_with('<'))
        .map(str::to_string)
        .collect()
}

/// Whether a page documents the key at `path`: some documented key is the
/// path or its end (`dns.timeout` documents `upstream.dns.timeout`, and so
/// does a bare `timeout` unless `shared`: another table of the section has
/// a `timeout` too; `health.timeout` never does).
fn documents(page: &BTreeSet<Vec<String>>, path: &[String], shared: bool) -> bool {
    page.iter().any(|doc| {
        !doc.is_empty() && path.ends_with(doc) && (!shared || doc.len() >= 2 || path.len() <= 2)
    })
}

fn config_defs() -> BTreeMap<String, Item> {
    let mut files = Vec::new();
    files_below(&repo().join("src/config"), "rs", &mut files);
    files.sort();
    let mut defs = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{}: cannot parse: {e}", file.display()));
        let rel = file.strip_prefix(repo()).unwrap();
        collect_items(&parsed.items, rel, &mut defs);
    }
    defs
}

/// Reference pages by stem: `upstream-lambda` → its text.
fn reference_pages() -> BTreeMap<String, String> {
    let dir = repo().join("docs/src/reference");
    let mut pages = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            pages.insert(stem, std::fs::read_to_string(&path).unwrap());
        }
    }
    pages
}

#[test]
fn every_config_key_is_documented() {
    let defs = config_defs();
    let mut walk = Walk {
        defs: &defs,
        keys: Vec::new(),
        reached: BTreeSet::new(),
    };
    for root in ["ConfigFile", "PolicyFile"] {
        assert!(
            defs.contains_key(root),
            "src/config/ has no {root} any more"
        );
        walk.walk(root, None, "", 0);
    }
    assert!(
        walk.keys.len() > 100,
        "only {} keys found: the walk is broken",
        walk.keys.len()
    );

    let unreached: Vec<String> = defs
        .iter()
        .filter(|(name, item)| !walk.reached.contains(*name) && !matches!(item.def, Def::Values))
        .map(|(name, item)| format!("{name} ({})", item.file.display()))
        .collect();
    assert!(
        unreached.is_empty(),
        "config types that derive Deserialize but are reachable from neither ConfigFile nor \
         PolicyFile (so their keys are not checked against the docs): {unreached:?}"
    );

    // Names that stand for different keys within one section.
    let mut paths_of: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for key in &walk.keys {
        paths_of
            .entry((&key.section, &key.name))
            .or_default()
            .insert(&key.path);
    }

    let pages = reference_pages();
    let mut missing = String::new();
    let mut sections = BTreeSet::new();
    for key in &walk.keys {
        let shared = paths_of[&(key.section.as_str(), key.name.as_str())].len() > 1;
        let page = if key.section.is_empty() {
            "index".to_string()
        } else {
            key.section.replace('_', "-")
        };
        sections.insert(page.clone());
        let mut path = key_segments(&key.path);
        if let Some(last) = path.last_mut() {
            last.clone_from(&key.name);
        }
        let on_page = pages
            .iter()
            .filter(|(stem, _)| **stem == page || stem.starts_with(&format!("{page}-")))
            .any(|(_, text)| documents(&documented_keys(text), &path, shared));
        if !on_page {
            writeln!(
                missing,
                "  `{}` ({}; field of {} in {}): no table row or heading with {} in \
                 docs/src/reference/{page}.md or {page}-*.md",
                key.name,
                key.path,
                key.owner,
                key.file.display(),
                if shared {
                    format!("a dotted path ending in `{}`", key.name)
                } else {
                    format!("`{}`", key.name)
                },
            )
            .unwrap();
        }
    }
    assert!(
        missing.is_empty(),
        "config keys the code accepts but the configuration reference does not document:\n{missing}"
    );
    for page in &sections {
        assert!(
            pages.contains_key(page),
            "docs/src/reference/{page}.md is missing"
        );
    }
}

/// Every ```toml block of a Markdown file, with its line number.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        match &mut current {
            None if t.starts_with("```toml") => current = Some((i + 1, String::new())),
            Some(_) if t.starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn parse_as_config(text: &str) -> Result<(), String> {
    toml::from_str::<gatehouse::config::ConfigFile>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn parse_as_policy(text: &str) -> Result<(), String> {
    toml::from_str::<gatehouse::config::PolicyFile>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn shipped_and_documented_configs_are_accepted() {
    let mut problems = String::new();

    // The shipped configs: the quickstart, its policies, the examples.
    let main = repo().join("gatehouse.toml");
    if let Err(e) = parse_as_config(&std::fs::read_to_string(&main).unwrap()) {
        writeln!(problems, "gatehouse.toml: {e}").unwrap();
    }
    let mut policies = Vec::new();
    for dir in ["policies", "examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                policies.push(path);
            }
        }
    }
    assert!(
        !policies.is_empty(),
        "no policy files found under policies/ and examples/"
    );
    for path in &policies {
        if let Err(e) = parse_as_policy(&std::fs::read_to_string(path).unwrap()) {
            let rel = path.strip_prefix(repo()).unwrap();
            writeln!(problems, "{}: {e}", rel.display()).unwrap();
        }
    }

    // Every TOML example in the docs: a main config, a policy file, or a
    // fragment of a `[[route]]`.
    let mut docs = vec![repo().join("README.md")];
    files_below(&repo().join("docs/src"), "md", &mut docs);
    let mut blocks = 0;
    for path in &docs {
        let text = std::fs::read_to_string(path).unwrap();
        for (line, block) in toml_blocks(&text) {
            blocks += 1;
            let as_route = format!("[[route]]\nname = \"example\"\n{block}");
            let results = [
                parse_as_config(&block),
                parse_as_policy(&block),
                parse_as_policy(&as_route),
            ];
            if results.iter().all(Result::is_err) {
                let rel = path.strip_prefix(repo()).unwrap();
                writeln!(
                    problems,
                    "{}:{line}: this TOML example is not a valid main config, policy file or \
                     route fragment:\n    as main config: {}\n    as policy file: {}\n    as \
                     route fragment: {}",
                    rel.display(),
                    results[0].as_ref().unwrap_err().trim(),
                    results[1].as_ref().unwrap_err().trim(),
                    results[2].as_ref().unwrap_err().trim(),
                )
                .unwrap();
            }
        }
    }
    assert!(blocks > 5, "only {blocks} TOML examples found in the docs");
    assert!(problems.is_empty(), "configs the code refuses:\n{problems}");
}

/// mdBook's (and GitHub's) id for a heading: lower case, spaces to `-`,
/// punctuation other than `-` and `_` dropped; a link's text is kept.
fn heading_id(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find("](") {
        text.push_str(&rest[..open]);
        rest = rest[open + 2..].split_once(')').map_or("", |(_, r)| r);
    }
    text.push_str(rest);
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// Headings' ids, and the relative link targets, outside code blocks.
fn ids_and_links(markdown: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut links = Vec::new();
    let mut fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            ids.insert(heading_id(h.trim_start_matches('#').trim()));
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find([')', ' ']).unwrap_or(rest.len());
            let target = &rest[..end];
            if !target.is_empty() && !target.contains(':') {
                links.push(target.to_string());
            }
        }
    }
    (ids, links)
}

#[test]
fn doc_links_resolve() {
    let mut files = vec![repo().join("README.md")];
    files_below(&repo().join("docs/src"), "md", &mut files);
    let mut bad = String::new();
    for file in &files {
        let (_, links) = ids_and_links(&std::fs::read_to_string(file).unwrap());
        for link in links {
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let rel = file.strip_prefix(repo()).unwrap().display();
            if !target.exists() {
                writeln!(bad, "  {rel}: ({link}): no such file").unwrap();
            } else if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let (ids, _) = ids_and_links(&std::fs::read_to_string(&target).unwrap());
                if !ids.contains(anchor) {
                    writeln!(bad, "  {rel}: ({link}): no heading with that id").unwrap();
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links in the docs:\n{bad}");
}
