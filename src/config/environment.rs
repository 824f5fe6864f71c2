//! Values `main` hands to the library in place of the process environment
//! (which the library never reads), a redacting wrapper for secrets, and URL
//! redaction for logs.
//!
//! Not here: the variables gatehouse itself honours (`GATEHOUSE_METRICS`,
//! `OTEL_*`, `AWS_*`): those are clap flags with `env =` in `src/cli/args.rs`
//! and reach the library as typed settings.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The values of the environment variables a config file names (an
/// issuer's `hmac_secret_env`): the only use of it. `main` hands in a
/// lookup that reads one named variable when the config asks for it (at
/// start and at every reload); tests hand in a map. Debug output never
/// shows a value.
#[derive(Clone, Default)]
pub struct Environment(Source);

#[derive(Clone)]
enum Source {
    Map(Arc<BTreeMap<String, String>>),
    Lookup(Arc<dyn Fn(&str) -> Option<String> + Send + Sync>),
}

impl Default for Source {
    fn default() -> Source {
        Source::Map(Arc::default())
    }
}

impl Environment {
    /// Environment from `(name, value)` pairs.
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment(Source::Map(Arc::new(vars.into_iter().collect())))
    }

    /// Environment that asks `lookup` for each variable a config names,
    /// when it names it (`main` passes a reader of the process environment).
    pub fn lookup(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Environment {
        Environment(Source::Lookup(Arc::new(lookup)))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        match &self.0 {
            Source::Map(map) => map.get(name).cloned(),
            Source::Lookup(lookup) => lookup(name),
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Map(map) => f.debug_set().entries(map.keys()).finish(),
            Source::Lookup(_) => f.write_str("Environment(config-named variables)"),
        }
    }
}

/// A secret value (an AWS secret key, a session token): its Debug output
/// is `***`, so a settings struct that holds one can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// `url` with any `user:password@` part replaced by `***@`, for Debug
/// output and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_asked_only_for_the_named_variable_and_never_printed() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let env = Environment::lookup(move |name| {
            log.lock().unwrap().push(name.to_owned());
            (name == "HS").then(|| "v4lue".to_owned())
        });
        assert_eq!(env.get("HS").as_deref(), Some("v4lue"));
        assert_eq!(env.get("OTHER"), None);
        assert_eq!(*asked.lock().unwrap(), ["HS", "OTHER"]);
        assert!(!format!("{env:?}").contains("v4lue"));
        let map = Environment::new([("HS".to_owned(), "v4lue".to_owned())]);
        assert_eq!(format!("{map:?}"), "{\"HS\"}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s: Secret = "wJalrXUtnFEMI".parse().unwrap();
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "wJalrXUtnFEMI");
    }
}
