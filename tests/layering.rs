//! The crate's top-level modules form no cycle: each module's non-test
//! source names `crate::<module>` only of modules below it. A cycle makes
//! two modules one thing to understand; this check keeps the layering the
//! refactors of issue 21 made (DESIGN.md, "Shape of the code").
//!
//! Reads `src/` as text: `use crate::x`, `crate::x::…` in code (comments
//! and `#[cfg(test)]` modules left out). `main.rs` and `cli/` are the
//! binary, outside the library's layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n != "tests" && n != "testdata")
            {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, strings' contents kept (good enough: no
/// string in this crate spells `crate::`), and cut at the first test module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `crate::name` references in `code`.
fn uses(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        rest = tail;
    }
    out
}

/// Module → the modules it uses, for the library's top-level modules.
fn graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let name = rel.to_string_lossy().replace('\\', "/");
        let top = name
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_owned();
        if matches!(top.as_str(), "main" | "lib" | "cli")
            || name.ends_with("tests.rs")
            || name.ends_with("_tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for used in uses(&code_of(&text)) {
            if used != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(used)
                    .or_default()
                    .insert(name.clone());
            }
        }
    }
    graph
}

/// A path from `from` back to `from`, if there is one.
fn cycle_through(
    graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    from: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flat_map(|m| m.keys()) {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    assert!(
        graph.len() >= 10,
        "the source walk found the modules: {:?}",
        graph.keys().collect::<Vec<_>>()
    );
    let mut cycles = Vec::new();
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            let why: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let files = &graph[&w[0]][&w[1]];
                    format!(
                        "{} -> {} ({})",
                        w[0],
                        w[1],
                        files.iter().next().map_or("", |f| f)
                    )
                })
                .collect();
            cycles.push(why.join(", "));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeMap<String, BTreeSet<String>>>, a: &str, b: &str| {
        g.entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default()
            .insert("f.rs".to_owned());
    };
    edge(&mut graph, "a", "b");
    edge(&mut graph, "b", "c");
    assert_eq!(cycle_through(&graph, "a"), None, "a chain is no cycle");
    edge(&mut graph, "c", "a");
    assert_eq!(
        cycle_through(&graph, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        uses(&code_of(
            "use crate::proxy::X; // crate::admin\nfn f() { crate::tls::go() }\n#[cfg(test)]\nuse crate::store;"
        )),
        ["proxy".to_owned(), "tls".to_owned()].into_iter().collect()
    );
}
