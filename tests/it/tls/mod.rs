//! TLS: SNI certificate choice, protocol versions and ALPN, HTTPS requests
//! end to end, certificate rotation (file watch and reload), client
//! certificates (mTLS), and TLS towards upstreams with a configured CA.

mod listener;
mod upstream_tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::tls::PemPair;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A policy with one direct answer: `GET /hello` → 200 "hi".
const HELLO: &str =
    "[[route]]\nname = \"hello\"\npath = \"/hello\"\nrespond = { status = 200, body = \"hi\" }\n";

/// A cert and key file, as written by [`TestCa::issue`].
type Files = (PathBuf, PathBuf);

/// Name, ALPN protocols offered, protocol chosen, HTTP version spoken.
type AlpnCase = (
    &'static str,
    &'static [&'static [u8]],
    Option<&'static [u8]>,
    Version,
);

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A TLS listener called `name` serving `certs` (the first is the default),
/// with `tls_extra` appended to its `[listener.tls]` table.
fn tls_listener(name: &str, certs: &[Files], tls_extra: &str) -> String {
    let certs = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = {}, key = {} }}", toml_str(c), toml_str(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nname = \"{name}\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{certs}]\n{tls_extra}\n"
    )
}

/// The leaf certificate in a PEM file.
fn leaf_in_file(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("read cert file")
        .next()
        .expect("a certificate")
        .expect("valid PEM")
}

fn leaf_in_pem(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid PEM")
}

/// The DNS names of a certificate, for readable failure messages.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("parse certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

/// The leaf certificate the server presented.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    roots
}

/// A client config trusting `ca_pem`, limited to `versions`.
fn client_with_versions(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Verifies the chain against the CA but accepts any name: to see which
/// certificate a server picks for a name none of its certificates has.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn client_any_name(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let provider = gatehouse::tls::provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)), provider.clone())
            .build()
            .expect("verifier");
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A TLS handshake with `cfg` to `addr`, sending `name` as SNI (an IP
/// address sends no SNI). Bounded by 10 s.
async fn handshake(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(cfg).connect(server_name, tcp).await
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(std::io::Error::other)?
}

/// One client connection over an established TLS stream, speaking what
/// ALPN chose (h2, else HTTP/1.1).
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    async fn open(tls: TlsStream<TcpStream>) -> Conn {
        Conn::try_open(tls).await.expect("HTTP handshake")
    }

    /// Like [`Conn::open`], but `None` when the server drops the connection.
    async fn try_open(tls: TlsStream<TcpStream>) -> Option<Conn> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let opened = async {
            if h2 {
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Ok::<_, hyper::Error>(Conn::H2(send))
            } else {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Ok(Conn::H1(send))
            }
        };
        tokio::time::timeout(Duration::from_secs(10), opened)
            .await
            .ok()?
            .ok()
    }

    /// `GET https://{host}{path}` on this very connection: status, version, body.
    async fn get(&mut self, host: &str, path: &str) -> (StatusCode, Version, String) {
        self.try_get(host, path).await.expect("response")
    }

    /// Like [`Conn::get`], but `None` when the request fails.
    async fn try_get(&mut self, host: &str, path: &str) -> Option<(StatusCode, Version, String)> {
        let exchange = async {
            let resp = match self {
                Conn::H1(send) => {
                    let req = Request::get(path)
                        .header("host", host)
                        .body(Empty::new())
                        .expect("request");
                    send.send_request(req).await
                }
                Conn::H2(send) => {
                    let req = Request::get(format!("https://{host}{path}"))
                        .version(Version::HTTP_2)
                        .body(Empty::new())
                        .expect("request");
                    send.send_request(req).await
                }
            }
            .ok()?;
            let (status, version) = (resp.status(), resp.version());
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, version, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()
            .flatten()
    }
}

/// An HTTPS client trusting `ca_pem`, with `a.test` resolved to `addr`,
/// optionally presenting `identity`.
fn https_client(
    ca_pem: &str,
    addr: SocketAddr,
    identity: Option<&PemPair>,
    http1_only: bool,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .resolve("a.test", addr)
        .timeout(Duration::from_secs(10));
    if let Some(pair) = identity {
        let pem = format!("{}{}", pair.cert, pair.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    if http1_only {
        b = b.http1_only();
    }
    b.build().expect("https client")
}
