//! Config types for JWT issuers: which tokens the gateway accepts and how
//! their claims become a [`crate::auth::Principal`].
//!
//! This module owns only the serde shape, the documented defaults and the
//! cheap `validator` rules. It reads no files and no environment: turning a
//! spec into a usable issuer (reading PEM files, resolving the HMAC secret
//! from the environment value the caller hands in, cross-checking algorithms
//! against key types) is [`crate::auth::jwt::Issuer::build`]'s job, which
//! reports every problem with the issuer's name and the field.
//!
//! Security caveats: the algorithm list is required and comes only from
//! here, never from a token. An HMAC secret is never written in a config
//! file, only the *name* of the environment variable that holds it.
//! `signing_key` and `dev_keys` exist for local development
//! (`gatehouse token`, the quickstart) and should not be set in production.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use validator::Validate;

use super::Dur;

/// One trusted token issuer (an identity provider, or the gateway's own dev
/// keys). A route names the issuers it accepts.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerSpec {
    /// A unique name, referenced by routes; also the principal's
    /// `credential_id` and the name in logs.
    #[validate(length(min = 1, max = 128))]
    pub name: String,
    /// The expected `iss` claim. When set, tokens must carry exactly this
    /// issuer, and it is how a token is matched to this issuer when a route
    /// accepts several. When unset, `iss` is not checked (only its type).
    pub issuer: Option<String>,
    /// Accepted audiences: the token's `aud` (a string or an array of
    /// strings) must contain one of them. When empty, a token that carries
    /// an `aud` at all is refused (RFC 7519 §4.1.3: we cannot tell whether
    /// we are the intended audience).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms, required and non-empty: `HS256`, `HS384`,
    /// `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384`, `EdDSA`. `none` is never accepted. HMAC and
    /// asymmetric algorithms may not be mixed in one issuer.
    #[validate(length(min = 1, max = 12))]
    pub algorithms: Vec<String>,
    /// Static public keys (PEM: SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`
    /// or an X.509 `CERTIFICATE`), for RSA, EC P-256/P-384 and Ed25519
    /// algorithms.
    #[serde(default)]
    pub public_keys: Vec<PublicKeySpec>,
    /// Name of the environment variable holding the HMAC secret (raw bytes,
    /// at least 32) for `HS*` algorithms. Never the secret itself.
    pub hmac_secret_env: Option<String>,
    /// A JWK Set URL (`https://…`, or `http://…` for a local IdP) to fetch
    /// public keys from. Symmetric (`oct`) keys in it are ignored.
    pub jwks_url: Option<String>,
    /// How often the JWK Set is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Tokens with an unknown `kid` trigger an extra fetch of the JWK Set,
    /// at most once per this interval (so random `kid`s cannot make the
    /// gateway hammer the IdP).
    #[serde(default = "default_jwks_min_refresh_interval")]
    pub jwks_min_refresh_interval: Dur,
    /// Timeout for one JWK Set fetch, connect and body included.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout: Dur,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`. Set explicitly
    /// (the JWT library's own default would be 60 s).
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Longest accepted token, in bytes; longer ones are refused before any
    /// decoding.
    #[serde(default = "default_max_token_bytes")]
    #[validate(range(min = 256, max = 65536))]
    pub max_token_bytes: usize,
    /// Claims every token must carry (any value but `null`), in addition to
    /// `exp` and `sub`, which are always required.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The claim holding scopes (a space-separated string or an array of
    /// strings). Default: `scope` (space-separated), else `scp` (array or
    /// string).
    pub scope_claim: Option<String>,
    /// The claim holding roles (an array of strings, or a space-separated
    /// string). Default: no roles.
    pub roles_claim: Option<String>,
    /// The claim holding the caller's plan (a string). Default: no plan.
    pub plan_claim: Option<String>,
    /// Claims forwarded upstream as headers, `claim = "header-name"`, e.g.
    /// `sub = "x-auth-sub"`. Strings are sent as they are, numbers and
    /// booleans as text, arrays joined with `,`; a value that is not valid
    /// in a header is dropped. Only these derived headers are forwarded,
    /// never the raw token claims.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Private key PEM (PKCS#8, or PKCS#1 for RSA) used by `gatehouse
    /// token` to mint dev tokens. Relative to the config directory. The
    /// running gateway never reads it. Development only.
    pub signing_key: Option<PathBuf>,
    /// If `signing_key` and the first public key file are both missing,
    /// generate an ES256 key pair there (quickstart). Development only.
    #[serde(default)]
    pub dev_keys: bool,
}

/// A static public key of an issuer.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeySpec {
    /// PEM file, relative to the config directory.
    pub path: PathBuf,
    /// The key id. When set, a token whose header names another `kid` is
    /// not checked against this key; when unset, the key is tried for any
    /// token of a matching algorithm.
    pub kid: Option<String>,
}

fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_jwks_min_refresh_interval() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_jwks_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_max_token_bytes() -> usize {
    8192
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let minimal: JwtIssuerSpec =
            toml::from_str("name = \"idp\"\nalgorithms = [\"ES256\"]\n").unwrap();
        assert_eq!(minimal.jwks_refresh, Dur(Duration::from_secs(300)));
        assert_eq!(
            minimal.jwks_min_refresh_interval,
            Dur(Duration::from_secs(30))
        );
        assert_eq!(minimal.jwks_timeout, Dur(Duration::from_secs(5)));
        assert_eq!(minimal.leeway, Dur(Duration::from_secs(30)));
        assert_eq!(minimal.max_token_bytes, 8192);
        assert!(!minimal.dev_keys);
        assert!(minimal.validate().is_ok());

        let cases = [
            (
                "unknown key",
                "name = \"i\"\nalgorithms = [\"ES256\"]\nlee_way = \"1s\"\n",
            ),
            ("no algorithms", "name = \"i\"\n"),
            (
                "unknown key in public_keys",
                "name = \"i\"\nalgorithms = [\"ES256\"]\n[[public_keys]]\npath = \"k.pem\"\nkind = \"x\"\n",
            ),
            (
                "bad duration",
                "name = \"i\"\nalgorithms = [\"ES256\"]\nleeway = \"soon\"\n",
            ),
        ];
        for (name, text) in cases {
            assert!(toml::from_str::<JwtIssuerSpec>(text).is_err(), "{name}");
        }

        let invalid = [
            ("empty algorithms", "name = \"i\"\nalgorithms = []\n"),
            ("empty name", "name = \"\"\nalgorithms = [\"ES256\"]\n"),
            (
                "tiny max_token_bytes",
                "name = \"i\"\nalgorithms = [\"ES256\"]\nmax_token_bytes = 10\n",
            ),
        ];
        for (name, text) in invalid {
            let spec: JwtIssuerSpec = toml::from_str(text).unwrap();
            assert!(spec.validate().is_err(), "{name}");
        }
    }
}
