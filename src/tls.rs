//! TLS: the listeners' rustls server configs (SNI certificate choice,
//! optional client certificates), the upstream client config, and local
//! development certificates.
//!
//! Only TLS 1.3 and 1.2 with rustls' default (modern) cipher suites are
//! offered; ALPN offers h2 and http/1.1. A server config is immutable: a
//! reload builds a new one (carrying over the session cache and ticket keys so
//! resumption survives, except on mTLS listeners, where a resumed session
//! would skip the new client CA) and the listener swaps it in for new handshakes, so
//! established connections are never touched. Private keys are never logged.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::{CertConfig, ClientAuth, TlsConfig};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {what}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
    /// rustls refused the material.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Writing development certificates failed.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating development certificates failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        path: path.to_path_buf(),
        what: "reading certificates",
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "no certificate found",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.to_path_buf(),
        what: "reading private key",
        source,
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            context: format!("{}: CA certificate", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// Facts about a loaded certificate, for logs and the status page.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The certificate file.
    pub path: PathBuf,
    /// The SNI names it serves.
    pub names: Vec<String>,
    /// When it expires (Unix seconds).
    pub not_after: i64,
}

fn cert_names_and_expiry(der: &CertificateDer<'_>) -> (Vec<String>, i64) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return (Vec::new(), 0);
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    (names, cert.validity().not_after.timestamp())
}

/// Picks a certificate by SNI: exact name, then `*.` wildcard, then the default.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn load_certified(
    c: &CertConfig,
    base: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let cert_path = resolve(base, &c.cert);
    let key_path = resolve(base, &c.key);
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Rustls {
            context: format!("{}: private key", key_path.display()),
            source,
        })?;
    let (san_names, not_after) = certs.first().map(cert_names_and_expiry).unwrap_or_default();
    let names = if c.names.is_empty() {
        san_names
    } else {
        c.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|source| TlsError::Rustls {
        context: format!(
            "{} and {} do not belong together",
            cert_path.display(),
            key_path.display()
        ),
        source,
    })?;
    Ok((
        Arc::new(ck),
        CertInfo {
            path: cert_path,
            names,
            not_after,
        },
    ))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Builds a listener's server config. `previous` passes on the session
/// cache and ticket keys across reloads (not for mTLS listeners).
pub fn server_config(
    tls: &TlsConfig,
    base: &Path,
    previous: Option<&rustls::ServerConfig>,
) -> Result<(Arc<rustls::ServerConfig>, Vec<CertInfo>), TlsError> {
    let provider = provider();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut infos = Vec::new();
    for c in &tls.certs {
        let (key, info) = load_certified(c, base, &provider)?;
        for name in &info.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_owned())
                    .or_insert_with(|| key.clone()),
                None => exact.entry(name.clone()).or_insert_with(|| key.clone()),
            };
        }
        default.get_or_insert_with(|| key.clone());
        infos.push(info);
    }
    let Some(default) = default else {
        return Err(TlsError::Empty {
            path: base.to_path_buf(),
            what: "a TLS listener needs at least one certificate",
        });
    };
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "protocol versions".into(),
            source,
        })?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(&resolve(base, ca))?);
            let vb = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = match tls.client_auth {
                ClientAuth::Required => vb.build()?,
                ClientAuth::Optional => vb.allow_unauthenticated().build()?,
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Sessions survive a reload only without client certificates: a session
    // resumed from before the reload would skip verification against a
    // changed client CA.
    match previous.filter(|_| tls.client_ca.is_none()) {
        Some(prev) => {
            cfg.session_storage = prev.session_storage.clone();
            cfg.ticketer = prev.ticketer.clone();
        }
        None => {
            cfg.ticketer =
                rustls::crypto::ring::Ticketer::new().map_err(|source| TlsError::Rustls {
                    context: "session tickets".into(),
                    source,
                })?;
        }
    }
    Ok((Arc::new(cfg), infos))
}

/// The client config for an upstream: `ca` replaces the public web roots.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => load_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "protocol versions".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

/// A freshly generated CA.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevCa { .. }")
    }
}

/// A certificate and its key, PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PemPair { key: <redacted>, .. }")
    }
}

fn validity(params: &mut rcgen::CertificateParams, days: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let to_dt = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = to_dt(now.saturating_sub(3600));
    params.not_after = to_dt(now + days * 86_400);
}

impl DevCa {
    /// Generates a new CA named `name`.
    pub fn generate(name: &str) -> Result<DevCa, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    /// Loads a CA saved earlier from [`DevCa::pem`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<DevCa, TlsError> {
        let key = rcgen::KeyPair::from_pem(key_pem)?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem)?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> PemPair {
        PemPair {
            cert: self.cert.pem(),
            key: self.key.serialize_pem(),
        }
    }

    /// Issues a leaf certificate for `names` (DNS names or IP addresses),
    /// valid for `days`, usable as server and client certificate.
    pub fn issue(&self, names: &[&str], days: u64) -> Result<PemPair, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, days);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write to a temporary file, then rename: a watcher never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes a PEM pair to `cert` and `key` (the key readable by the owner only).
pub fn write_pair(pair: &PemPair, cert: &Path, key: &Path) -> Result<(), TlsError> {
    write_file(key, &pair.key, true)?;
    write_file(cert, &pair.cert, false)
}

/// Where [`dev_certs`] wrote its files.
#[derive(Debug, Clone)]
pub struct DevCertPaths {
    /// The CA certificate to give clients (`curl --cacert`).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

/// Writes (or reuses) a local CA in `ca_dir` and issues a certificate for
/// localhost, 127.0.0.1 and ::1 to `cert` / `key`. Blocking file I/O.
pub fn dev_certs(ca_dir: &Path, cert: &Path, key: &Path) -> Result<DevCertPaths, TlsError> {
    let ca_cert = ca_dir.join("ca.pem");
    let ca_key = ca_dir.join("ca-key.pem");
    let existing = match (
        std::fs::read_to_string(&ca_cert),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(c), Ok(k)) => DevCa::load(&c, &k).ok(),
        _ => None,
    };
    let ca = match existing {
        Some(ca) => ca,
        None => {
            let ca = DevCa::generate("gatehouse development CA")?;
            write_pair(&ca.pem(), &ca_cert, &ca_key)?;
            ca
        }
    };
    let leaf = ca.issue(&["localhost", "127.0.0.1", "::1"], 365)?;
    write_pair(&leaf, cert, key)?;
    Ok(DevCertPaths {
        ca: ca_cert,
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertConfig;

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = DevCa::generate("test").unwrap_or_else(|e| panic!("{e}"));
        let mut certs = Vec::new();
        for (file, names) in [
            ("a", vec!["a.test"]),
            ("w", vec!["*.w.test"]),
            ("b", vec!["b.test"]),
        ] {
            let pair = ca.issue(&names, 1).unwrap_or_else(|e| panic!("{e}"));
            let (c, k) = (
                dir.path().join(format!("{file}.pem")),
                dir.path().join(format!("{file}-key.pem")),
            );
            write_pair(&pair, &c, &k).unwrap_or_else(|e| panic!("{e}"));
            certs.push(CertConfig {
                cert: c,
                key: k,
                names: vec![],
            });
        }
        let provider = provider();
        let mut keys = Vec::new();
        for c in &certs {
            let (key, info) =
                load_certified(c, dir.path(), &provider).unwrap_or_else(|e| panic!("{e}"));
            assert!(info.not_after > 0);
            keys.push((key, info.names));
        }
        let resolver = SniResolver {
            exact: HashMap::from([
                ("a.test".to_owned(), keys[0].0.clone()),
                ("b.test".to_owned(), keys[2].0.clone()),
            ]),
            wildcard: HashMap::from([("w.test".to_owned(), keys[1].0.clone())]),
            default: keys[0].0.clone(),
        };
        assert_eq!(keys[1].1, vec!["*.w.test".to_owned()]);
        let cases = [
            ("exact", Some("b.test"), 2),
            ("case-insensitive", Some("B.TEST"), 2),
            ("wildcard", Some("x.w.test"), 1),
            ("wildcard is one label", Some("y.x.w.test"), 0),
            ("unknown", Some("c.test"), 0),
            ("no sni", None, 0),
        ];
        for (name, sni, want) in cases {
            assert!(Arc::ptr_eq(&resolver.pick(sni), &keys[want].0), "{name}");
        }
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = DevCa::generate("test").unwrap_or_else(|e| panic!("{e}"));
        let one = ca.issue(&["a.test"], 1).unwrap_or_else(|e| panic!("{e}"));
        let two = ca.issue(&["b.test"], 1).unwrap_or_else(|e| panic!("{e}"));
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        let mixed = PemPair {
            cert: one.cert,
            key: two.key,
        };
        write_pair(&mixed, &c, &k).unwrap_or_else(|e| panic!("{e}"));
        let cfg = CertConfig {
            cert: c,
            key: k,
            names: vec![],
        };
        let err = load_certified(&cfg, dir.path(), &provider())
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("do not belong together")));
    }
}
