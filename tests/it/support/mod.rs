//! Test support: real backends, a real gateway on ephemeral loopback ports,
//! a generated CA, and clients that speak real TLS.

#![allow(dead_code)]

mod programs;
mod webdriver;

pub use programs::{Reaped, free_port, tool};
pub use webdriver::Browser;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::server::{Running, StartOptions};
use gatehouse::tls::{DevCa, write_pair};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A real HTTP backend (HTTP/1.1 and h2c) on 127.0.0.1:0, stopped on drop.
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Backend { addr, task }
    }

    /// An echo backend that counts the requests it receives.
    pub async fn counting() -> (Backend, Arc<std::sync::atomic::AtomicUsize>) {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let backend = Backend::start(move |req| {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            echo_response(req)
        })
        .await;
        (backend, hits)
    }

    /// Answers with a JSON description of the request it got.
    pub async fn echo() -> Backend {
        Backend::start(|req| async move { echo_response(req).await }).await
    }

    /// Answers every request with 101 and then echoes bytes in upper case
    /// on the upgraded connection.
    pub async fn upgrading() -> Backend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        Backend::start(|mut req| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(http::StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(Bytes::new()))
                .expect("101 response")
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// What [`Backend::echo`] saw.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: usize,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

pub async fn echo_response(req: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-backend", "echo")
        .header("connection", "x-hop")
        .header("x-hop", "should-not-pass")
        .body(full(json.to_string()))
        .expect("response")
}

/// A CA for tests, writing PEM files into a directory.
pub struct TestCa {
    pub ca: DevCa,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let ca = DevCa::generate("gatehouse test CA").expect("generate CA");
        std::fs::write(dir.join("ca.pem"), ca.pem().cert).expect("write CA");
        TestCa {
            ca,
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem().cert
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names` into `<stem>.pem` / `<stem>-key.pem`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let pair = self.ca.issue(names, 30).expect("issue certificate");
        let cert = self.dir.join(format!("{stem}.pem"));
        let key = self.dir.join(format!("{stem}-key.pem"));
        write_pair(&pair, &cert, &key).expect("write certificate");
        (cert, key)
    }
}

/// Builds a gateway config in a temp dir and starts it.
pub struct GatewayBuilder {
    pub dir: tempfile::TempDir,
    main: String,
    policies: Vec<(String, String)>,
    env: Vec<(String, String)>,
    otlp: gatehouse::telemetry::trace::OtlpOptions,
    aws: gatehouse::proxy::lambda::AwsSettings,
}

impl GatewayBuilder {
    /// A plain listener called `http` and no policies.
    pub fn new() -> GatewayBuilder {
        GatewayBuilder {
            dir: tempfile::tempdir().expect("tempdir"),
            main: String::from(
                "policies = \"policies\"\n[admin]\naddr = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n",
            ),
            policies: Vec::new(),
            env: Vec::new(),
            otlp: Default::default(),
            aws: Default::default(),
        }
    }

    /// An environment value the config may name (never the process's own).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The OpenTelemetry settings (as `--otel-*` would give them).
    pub fn otlp(mut self, otlp: gatehouse::telemetry::trace::OtlpOptions) -> Self {
        self.otlp = otlp;
        self
    }

    /// Static AWS keys for Lambda upstreams (as `--aws-access-key-id` and
    /// `--aws-secret-access-key` would give them).
    pub fn aws_keys(mut self, id: &str, secret: &str) -> Self {
        self.aws.access_key_id = Some(id.to_owned());
        self.aws.secret_access_key = Some(gatehouse::config::Secret::new(secret));
        self
    }

    /// Appends raw TOML to the main file (more listeners, [server], [defaults]).
    pub fn main(mut self, toml: &str) -> Self {
        self.main.push('\n');
        self.main.push_str(toml);
        self
    }

    /// Adds a policy file.
    pub fn policy(mut self, name: &str, toml: &str) -> Self {
        self.policies.push((name.to_owned(), toml.to_owned()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the files without starting anything.
    pub fn write(&self) -> PathBuf {
        let policies = self.dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policy dir");
        for (name, text) in &self.policies {
            std::fs::write(policies.join(name), text).expect("write policy");
        }
        let config = self.dir.path().join("gatehouse.toml");
        std::fs::write(&config, &self.main).expect("write config");
        config
    }

    pub async fn start(self) -> TestGateway {
        self.start_with(false).await
    }

    pub async fn start_watching(self) -> TestGateway {
        self.start_with(true).await
    }

    async fn start_with(self, watch: bool) -> TestGateway {
        let config_path = self.write();
        let running = gatehouse::server::start(StartOptions {
            watch,
            env: gatehouse::config::Environment::new(self.env),
            trace: gatehouse::telemetry::trace::TraceSettings::new(&self.otlp)
                .expect("valid OTLP settings"),
            aws: self.aws,
            ..StartOptions::new(config_path)
        })
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
        TestGateway {
            running: Some(running),
            dir: self.dir,
        }
    }
}

/// A running gateway; its listeners close when the test's runtime ends.
pub struct TestGateway {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.running().addr(listener).expect("listener")
    }

    /// `http://<addr of listener "http">`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("http"))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().admin_addr)
    }

    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("policies").join(name)
    }

    pub async fn shutdown(mut self) -> bool {
        match self.running.take() {
            Some(r) => r.shutdown().await,
            None => true,
        }
    }
}

/// A plain HTTP client that never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// An HTTPS client trusting only `ca_pem`, with `names` resolved to `addr`.
pub fn tls_client(ca_pem: &str, names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"));
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().expect("tls client")
}

/// A rustls client config trusting `ca_pem` (for raw TLS tests).
pub fn rustls_client(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The JSON error body's `error` code.
pub async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.expect("JSON error body");
    assert!(
        v["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "request_id in {v}"
    );
    assert!(v["message"].as_str().is_some(), "message in {v}");
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// The real binary, with stdout (the JSON log) read line by line.
pub struct Proc {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_with_env(args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables for the child only.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gatehouse");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 10 s) for a log line whose message is `message`.
    pub async fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == message
                {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            _ => panic!("no `{message}` log line; saw:\n{}", self.seen.join("\n")),
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Collects the rest of stdout until the process exits (at most 10 s).
    pub async fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("process exits in time")
            .expect("wait");
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(2), self.lines.recv()).await
        {
            self.seen.push(line);
        }
        (status, self.seen)
    }

    /// Peak resident memory of the process so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Starts `gatehouse serve` on `config` and returns it with the address
    /// of its first public listener.
    pub async fn serve(config: &Path) -> (Proc, String) {
        let (proc, addr, _admin) = serve_with_admin(config).await;
        (proc, addr)
    }
}

// ---- Credentials and the admin API (auth and admin tests) ----

/// Argon2 parameters cheap enough for tests (never for production).
pub const FAST_ARGON2: gatehouse::auth::api_key::Argon2Settings =
    gatehouse::auth::api_key::Argon2Settings {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

/// An `[api_keys]` table with cheap argon2 parameters, plus `extra` lines.
pub fn fast_api_keys(extra: &str) -> String {
    format!("[api_keys]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n{extra}\n")
}

/// A fresh random admin token and its argon2id hash (cheap parameters).
pub fn admin_token() -> (String, String) {
    let token = format!(
        "adm{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let hash =
        gatehouse::auth::api_key::hash_admin_token(&token, &FAST_ARGON2).expect("hash token");
    (token, hash)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl GatewayBuilder {
    /// Adds lines to the `[admin]` table of the main file.
    pub fn admin(mut self, toml: &str) -> Self {
        self.main = self
            .main
            .replacen("[admin]\n", &format!("[admin]\n{toml}\n"), 1);
        self
    }

    /// Sets `[admin] token_hash`.
    pub fn admin_token_hash(self, hash: &str) -> Self {
        self.admin(&format!("token_hash = \"{hash}\""))
    }
}

/// The SQLite store a gateway in `dir` uses by default (`gatehouse.db`).
pub async fn open_store(dir: &Path) -> Arc<dyn gatehouse::store::KeyStore> {
    gatehouse::store::open(&gatehouse::store::StoreOptions {
        url: dir.join("gatehouse.db").to_string_lossy().into_owned(),
        schema: None,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .expect("open the gateway's store")
}

/// A client for the admin API with a bearer token. Answers are returned as
/// `(status, body)`; failure messages never print a body that holds a key.
pub struct AdminApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminApi {
    /// The admin API of an in-process gateway.
    pub fn new(gw: &TestGateway, token: &str) -> AdminApi {
        AdminApi::at(&format!("http://{}", gw.running().admin_addr), token)
    }

    /// The admin API at `base` (`http://host:port`).
    pub fn at(base: &str, token: &str) -> AdminApi {
        AdminApi {
            base: base.to_owned(),
            token: token.to_owned(),
            http: client(),
        }
    }

    /// One call; the body as text.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("admin call");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("admin body"))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, text) = self.call(reqwest::Method::GET, path, None).await;
        (s, serde_json::from_str(&text).expect("admin JSON"))
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (s, text) = self.call(reqwest::Method::POST, path, Some(&body)).await;
        (s, serde_json::from_str(&text).expect("admin JSON"))
    }

    /// Creates a consumer and returns its id.
    pub async fn create_consumer(&self, name: &str) -> String {
        let (s, v) = self
            .post("/v1/consumers", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(s, 201, "create consumer {name}: {v}");
        v["consumer"]["id"]
            .as_str()
            .expect("consumer id")
            .to_owned()
    }

    /// Creates a key for `consumer` and returns (key id, full key).
    pub async fn create_key(&self, consumer: &str, body: serde_json::Value) -> (String, String) {
        let (s, v) = self
            .post(&format!("/v1/consumers/{consumer}/keys"), body)
            .await;
        assert!(
            s == 201,
            "create key for {consumer}: status {s}, {}",
            v["error"]
        );
        let id = v["key"]["id"].as_str().expect("key id").to_owned();
        let full = v["api_key"].as_str().expect("api_key").to_owned();
        (id, full)
    }
}

/// [`Proc::serve`], also returning the admin listener's address.
pub async fn serve_with_admin(config: &Path) -> (Proc, String, String) {
    let mut proc = Proc::spawn(&[
        "serve",
        "--no-watch",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let admin = proc.wait_for("admin listening").await;
    let admin_addr = admin["admin_addr"].as_str().expect("admin_addr").to_owned();
    (proc, addr, admin_addr)
}

// ---- Restarts on the same files (rate-limit and quota tests) ----

impl TestGateway {
    /// Shuts the gateway down and hands back its temp dir (config, policy
    /// files, SQLite store) so that a new gateway can start on it with
    /// [`start_in`]. Returns whether every connection drained in time.
    pub async fn stop_keeping_dir(self) -> (bool, tempfile::TempDir) {
        let TestGateway { running, dir } = self;
        let drained = match running {
            Some(r) => r.shutdown().await,
            None => true,
        };
        (drained, dir)
    }
}

/// Starts a gateway on the config already written in `dir` (by a
/// [`GatewayBuilder`] whose gateway was stopped): same files, same store.
pub async fn start_in(dir: tempfile::TempDir) -> TestGateway {
    let running = gatehouse::server::start(StartOptions::new(dir.path().join("gatehouse.toml")))
        .await
        .unwrap_or_else(|e| panic!("gateway failed to restart: {e}"));
    TestGateway {
        running: Some(running),
        dir,
    }
}

/// Writes `request` on `s` and reads until one whole response with a
/// `Content-Length` has arrived, the peer closes, or 5 s pass. Returns the
/// text read and whether the peer closed the connection.
pub async fn raw_exchange<S>(s: S, request: &[u8]) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    raw_exchange_until(s, request, false).await
}

/// As [`raw_exchange`]; with `until_closed`, reads on past the first
/// response until the peer closes (or 5 s pass).
pub async fn raw_exchange_until<S>(mut s: S, request: &[u8], until_closed: bool) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if !until_closed && whole_response(&buf) {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// A TLS listener called `name` serving `cert`/`key`, with `extra` lines
/// appended to its `[listener.tls]` table.
pub fn tls_listener(name: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n{extra}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// Whether `buf` starts with one complete response that has a
/// `Content-Length`.
fn whole_response(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= end + 4 + len)
}

/// The body of a raw response (after the head).
pub fn raw_body(text: &str) -> &str {
    text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of a sample line on `/metrics` (`name{labels}`), if present.
pub async fn metric(gw: &TestGateway, series: &str) -> Option<f64> {
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
}
