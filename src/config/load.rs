//! Reading the main file and every policy file, with positioned errors.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use super::{ConfigFile, PolicyFile};

/// A file's path and text, kept so problems can be positioned by line.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as given or found.
    pub path: PathBuf,
    /// The whole text.
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        (line, column)
    }

    /// A problem at `span` of this file.
    pub fn problem(&self, span: Range<usize>, message: impl Into<String>) -> Problem {
        let (line, column) = self.line_col(span.start);
        Problem {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Adds one problem per failed `validator` rule of a value at `span`.
    pub fn validate(
        &self,
        what: &str,
        value: &impl Validate,
        span: Range<usize>,
        out: &mut Vec<Problem>,
    ) {
        if let Err(errors) = value.validate() {
            for message in validation_messages(&errors) {
                out.push(self.problem(span.clone(), format!("{what}: {message}")));
            }
        }
    }
}

/// One thing wrong with the configuration, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is about the file as a whole).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found; a config with any is rejected whole.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A policy file and where it came from.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// Its text, for positions.
    pub source: Arc<SourceFile>,
    /// Its content.
    pub file: PolicyFile,
}

/// The main file and all policy files, parsed but not yet compiled.
#[derive(Debug)]
pub struct Loaded {
    /// The main file's text.
    pub source: Arc<SourceFile>,
    /// The main file.
    pub config: ConfigFile,
    /// Directory the main file's relative paths start from.
    pub base_dir: PathBuf,
    /// The policy directory, resolved.
    pub policy_dir: PathBuf,
    /// Every policy file, sorted by path.
    pub policies: Vec<LoadedPolicy>,
}

impl Loaded {
    /// Resolves a path from the main file against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve(&self.base_dir, p)
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn whole_file(path: &Path, message: impl Into<String>) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Arc<SourceFile>, Problem> {
    std::fs::read_to_string(path)
        .map(|text| {
            Arc::new(SourceFile {
                path: path.to_path_buf(),
                text,
            })
        })
        .map_err(|e| whole_file(path, format!("cannot read: {e}")))
}

fn parse<T: DeserializeOwned>(source: &SourceFile) -> Result<T, Problem> {
    toml::from_str(&source.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        source.problem(span, e.message().trim().to_owned())
    })
}

/// Parses one policy file's text; `path` is only used in the error.
pub fn parse_policy(text: &str, path: &str) -> Result<PolicyFile, Problem> {
    let source = SourceFile {
        path: PathBuf::from(path),
        text: text.to_owned(),
    };
    parse(&source)
}

/// Reads and parses the main file and every `*.toml` file in its policy
/// directory. Does blocking file I/O: call it from a blocking context.
pub fn load(config_path: &Path) -> Result<Loaded, Problems> {
    let mut problems = Vec::new();
    let source = read(config_path).map_err(|p| Problems(vec![p]))?;
    let config: ConfigFile = parse(&source).map_err(|p| Problems(vec![p]))?;
    source.validate("[server]", &config.server, 0..0, &mut problems);
    source.validate("[store]", &config.store, 0..0, &mut problems);
    source.validate("[api_keys]", &config.api_keys, 0..0, &mut problems);
    source.validate("[usage]", &config.usage, 0..0, &mut problems);
    let base_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let policy_dir = resolve(&base_dir, &config.policies);

    let mut policies = Vec::new();
    match policy_files(&policy_dir) {
        Ok(files) => {
            for path in files {
                match read(&path).and_then(|source| {
                    parse::<PolicyFile>(&source).map(|file| LoadedPolicy { source, file })
                }) {
                    Ok(p) => policies.push(p),
                    Err(p) => problems.push(p),
                }
            }
        }
        Err(p) => problems.push(p),
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(Loaded {
        source,
        config,
        base_dir,
        policy_dir,
        policies,
    })
}

/// The `*.toml` files of the policy directory, sorted.
pub(super) fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| whole_file(dir, format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn validation_messages(errors: &ValidationErrors) -> Vec<String> {
    let mut out = Vec::new();
    for (field, kind) in errors.errors() {
        match kind {
            ValidationErrorsKind::Field(errs) => {
                for e in errs {
                    let detail = match (e.params.get("min"), e.params.get("max")) {
                        (Some(min), Some(max)) => format!("must be between {min} and {max}"),
                        (Some(min), None) => format!("must be at least {min}"),
                        (None, Some(max)) => format!("must be at most {max}"),
                        (None, None) => e.code.to_string(),
                    };
                    out.push(format!("`{field}` {detail}"));
                }
            }
            ValidationErrorsKind::Struct(inner) => {
                out.extend(
                    validation_messages(inner)
                        .into_iter()
                        .map(|m| format!("{field}.{m}")),
                );
            }
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    out.extend(
                        validation_messages(inner)
                            .into_iter()
                            .map(|m| format!("{field}[{i}].{m}")),
                    );
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> SourceFile {
        SourceFile {
            path: PathBuf::from("policies/a.toml"),
            text: text.to_owned(),
        }
    }

    #[test]
    fn line_and_column_are_one_based() {
        let s = src("a = 1\nbb = 2\n  c = é3\n");
        let cases = [
            ("start", 0, (1, 1)),
            ("second line", 6, (2, 1)),
            ("inside third line", 15, (3, 3)),
            ("after a multi-byte char", 21, (3, 8)),
            ("past the end", 999, (4, 1)),
        ];
        for (name, offset, want) in cases {
            assert_eq!(s.line_col(offset), want, "{name}");
        }
    }

    #[test]
    fn parse_errors_carry_file_line_and_column() {
        let cases = [
            (
                "unknown key",
                "[[route]]\nname = \"r\"\nprefx = \"/a\"\n",
                3,
                "unknown field `prefx`",
            ),
            ("bad syntax", "[[route]\nname = 1\n", 1, ""),
            (
                "wrong type",
                "[[upstream]]\nname = \"u\"\ntargets = \"http://x\"\n",
                3,
                "",
            ),
        ];
        for (name, text, line, contains) in cases {
            let s = src(text);
            let p = parse::<PolicyFile>(&s).err();
            let Some(p) = p else {
                panic!("{name}: expected an error");
            };
            assert_eq!(p.line, line, "{name}: {p}");
            assert!(p.column >= 1, "{name}");
            assert!(p.to_string().starts_with("policies/a.toml:"), "{name}: {p}");
            assert!(p.message.contains(contains), "{name}: {p}");
        }
    }
}
