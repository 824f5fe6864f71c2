//! The process environment as handed to the library (never read by it), and
//! URL redaction for logs.

use std::collections::BTreeMap;

/// Environment values handed in by `main` (library code never reads the
/// process environment). Config files name variables (e.g. an issuer's
/// `hmac_secret_env`); values are looked up here. Debug output lists the
/// names only, never a value.
#[derive(Clone, Default)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    /// Environment from `(name, value)` pairs.
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment(vars.into_iter().collect())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
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
