//! Several nodes on one key store: a change made through one gateway (or
//! through another writer, as the CLI is) reaches the others.
//!
//! The Postgres tests need a real server: they read its URL from
//! `GATEHOUSE_TEST_POSTGRES_URL` and are skipped (with a message) when it is
//! unset. Each uses a schema of its own, `gh_it_<random>`, dropped at the
//! end whether the test passed or not. Keys and the admin token are never
//! printed, not even in a failed assertion.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse::auth::api_key::{self, Argon2Settings};
use gatehouse::server::StartOptions;
use gatehouse::store::{ApiKey, Consumer, StoreOptions};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// Cheap argon2 for tests (the config below makes the gateway use the same).
const FAST_ARGON2: Argon2Settings = Argon2Settings {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

/// The bound: a change reaches every node within a second.
const CLUSTER_BOUND: Duration = Duration::from_secs(1);

/// The Postgres server to use, if the environment names one.
#[allow(clippy::disallowed_methods)]
fn postgres_url() -> Option<String> {
    std::env::var("GATEHOUSE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// `n` random lowercase ASCII letters.
fn random_lowercase(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// A store shared by the nodes of one test: a server and a schema of its own.
#[derive(Clone)]
struct SharedStore {
    url: String,
    schema: String,
}

impl std::fmt::Debug for SharedStore {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// The `[store]` section every node of the test uses.
    fn toml(&self) -> String {
        format!(
            "[store]\nurl = {}\nschema = \"{}\"\nmax_connections = 3\n",
            toml::Value::String(self.url.clone()),
            self.schema
        )
    }

    /// A pool of the test's own (not a gateway's) on the server.
    async fn pool(&self) -> sqlx::PgPool {
        tokio::time::timeout(Duration::from_secs(10), sqlx::PgPool::connect(&self.url))
            .await
            .expect("connecting to Postgres in time")
            .expect("connecting to Postgres")
    }
}

/// Runs `test` against a fresh schema on the Postgres server, then drops the
/// schema, also when `test` panicked (the panic is passed on afterwards).
/// Without a server it prints why and returns.
async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = postgres_url() else {
        println!("skipped: GATEHOUSE_TEST_POSTGRES_URL is not set");
        return;
    };
    let store = SharedStore {
        url,
        schema: format!("gh_it_{}", random_lowercase(12)),
    };
    let outcome = tokio::spawn(test(store.clone())).await;
    // Let the dropped gateways' background tasks notice they were stopped.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pool = store.pool().await;
    let dropped = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            store.schema
        ))
        .execute(&pool),
    )
    .await;
    pool.close().await;
    match outcome {
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("test task failed: {e}"),
        Ok(()) => {}
    }
    let dropped = dropped.expect("DROP SCHEMA in time");
    assert!(dropped.is_ok(), "DROP SCHEMA {}: {dropped:?}", store.schema);
}

/// A random admin token and its hash for `[admin] token_hash`.
fn admin_token() -> (String, String) {
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let hash = api_key::hash_admin_token(&token, &FAST_ARGON2).expect("hash admin token");
    (token, hash)
}

/// A route `/api` behind `auth = "api_key"`, forwarding to `backend`.
fn api_policy(backend: &Backend) -> String {
    format!(
        "[[upstream]]\nname = \"backend\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"backend\"\nauth = \"api_key\"\n",
        backend.url()
    )
}

/// `[api_keys]` for tests: cheap argon2, a failure budget the polling below
/// cannot exhaust (refusals of a key a node does not know yet are charged),
/// and a short last-used flush period.
const API_KEYS_TOML: &str = "[api_keys]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n\
     failure_burst = 100000\nfailures_per_minute = 100000\nlast_used_flush = \"200ms\"\n";

/// Starts a gateway whose config is `builder`'s plus `[admin] token_hash`
/// (the builder's own `[admin]` table cannot be reopened by appending).
async fn start_with_admin(builder: GatewayBuilder, token_hash: &str) -> TestGateway {
    let config_path = builder.write();
    let text = std::fs::read_to_string(&config_path).expect("read config");
    assert!(
        text.contains("[admin]\n"),
        "the builder writes an [admin] table"
    );
    let text = text.replacen(
        "[admin]\n",
        &format!(
            "[admin]\ntoken_hash = {}\n",
            toml::Value::String(token_hash.to_owned())
        ),
        1,
    );
    std::fs::write(&config_path, text).expect("write config");
    let running = gatehouse::server::start(StartOptions::new(config_path))
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
    TestGateway {
        running: Some(running),
        dir: builder.dir,
    }
}

/// One gateway node on the shared store.
async fn start_node(store: &SharedStore, backend: &Backend, token_hash: &str) -> TestGateway {
    let builder = GatewayBuilder::new()
        .main(&store.toml())
        .main(API_KEYS_TOML)
        .policy("api.toml", &api_policy(backend));
    start_with_admin(builder, token_hash).await
}

/// The admin API of one node. `Debug` does not show the token.
struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    fn of(gw: &TestGateway, token: &str) -> Admin {
        Admin {
            base: gw.admin_url(""),
            token: token.to_owned(),
            http: client(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp =
            tokio::time::timeout(Duration::from_secs(10), req.bearer_auth(&self.token).send())
                .await
                .expect("admin call in time")
                .expect("admin call");
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Creates a consumer; returns its id.
    async fn create_consumer(&self, name: &str) -> String {
        let (status, body) = self
            .post("/v1/consumers", Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create consumer: {body}");
        body["consumer"]["id"]
            .as_str()
            .expect("consumer id")
            .to_owned()
    }

    /// Creates a key for `consumer`; returns its id and the key itself
    /// (never printed: the answer's body is not shown either).
    async fn create_key(&self, consumer: &str) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("/v1/consumers/{consumer}/keys"),
                Some(json!({"name": "it"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create key");
        let id = body["key"]["id"].as_str().expect("key id").to_owned();
        let key = body["api_key"].as_str().expect("api_key").to_owned();
        assert!(key.starts_with(api_key::PREFIX), "a gatehouse key");
        (id, key)
    }

    /// The stored record of one key.
    async fn key(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/keys/{id}")).await;
        assert_eq!(status, StatusCode::OK, "show key: {body}");
        assert!(
            body.get("api_key").is_none() && body["key"].get("hash").is_none(),
            "a key listing holds neither the key nor its hash"
        );
        body["key"].clone()
    }
}

/// Calls `/api/ping` on `gw` with `key`; the status and, for a refusal, the
/// error code. Transport errors are answered as `None` (they do not show
/// the key).
async fn call(gw: &TestGateway, key: &str) -> Option<(StatusCode, String)> {
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .get(gw.url("/api/ping"))
            .header("x-api-key", key)
            .send(),
    )
    .await
    .ok()?
    .ok()?;
    let status = resp.status();
    let code = if status.is_success() {
        String::new()
    } else {
        error_code(resp).await
    };
    Some((status, code))
}

/// Calls `gw` every 20 ms until it answers `want` (at most `limit`); how
/// long that took, or `None`.
async fn time_until(
    gw: &TestGateway,
    key: &str,
    want: StatusCode,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        if let Some((status, _)) = call(gw, key).await
            && status == want
        {
            return Some(from.elapsed());
        }
        if from.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hits(counter: &Arc<AtomicUsize>) -> usize {
    counter.load(Ordering::SeqCst)
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

#[tokio::test]
async fn revocation_reaches_the_other_gateway_within_a_second() {
    with_postgres(|store| async move {
        let (backend, backend_hits) = Backend::counting().await;
        let (token, token_hash) = admin_token();
        let a = start_node(&store, &backend, &token_hash).await;
        let b = start_node(&store, &backend, &token_hash).await;
        let admin_a = Admin::of(&a, &token);

        let consumer = admin_a.create_consumer("acme").await;
        let (key_id, key) = admin_a.create_key(&consumer).await;

        let works_on_both = eventually(3, || async {
            let on_a = call(&a, &key).await?.0 == StatusCode::OK;
            let on_b = call(&b, &key).await?.0 == StatusCode::OK;
            (on_a && on_b).then_some(())
        })
        .await;
        assert!(
            works_on_both.is_some(),
            "the new key works on A and B within 3 s"
        );
        let forwarded = hits(&backend_hits);
        assert!(forwarded >= 2, "both nodes forwarded: {forwarded} hits");

        let revoke_sent = Instant::now();
        let (status, body) = admin_a
            .post(&format!("/v1/keys/{key_id}/revoke"), None)
            .await;
        let revoke_returned = Instant::now();
        assert_eq!(status, StatusCode::OK, "revoke: {body}");
        assert!(body["key"]["revoked_at"].is_i64(), "revoked_at set: {body}");

        // The node that took the call refuses the key at once.
        let first = call(&a, &key).await.expect("A answers");
        assert_eq!(
            first,
            (StatusCode::UNAUTHORIZED, "invalid_credentials".to_owned()),
            "A's first answer after the revoke call returned"
        );

        // The other node follows through LISTEN/NOTIFY.
        let took = time_until(
            &b,
            &key,
            StatusCode::UNAUTHORIZED,
            revoke_sent,
            Duration::from_secs(5),
        )
        .await
        .expect("B refuses the revoked key within 5 s");
        let after_return = took.saturating_sub(revoke_returned - revoke_sent);
        println!(
            "revocation reached B {} ms after the revoke call was sent ({} ms after it returned)",
            took.as_millis(),
            after_return.as_millis()
        );
        assert!(
            took < CLUSTER_BOUND,
            "B refused the revoked key only after {took:?} (bound {CLUSTER_BOUND:?})"
        );

        // Once refusing, B never forwards the key again.
        let refused_from = hits(&backend_hits);
        for _ in 0..5 {
            let answer = call(&b, &key).await.expect("B answers");
            assert_eq!(
                answer,
                (StatusCode::UNAUTHORIZED, "invalid_credentials".to_owned()),
                "B keeps refusing"
            );
        }
        let answer = call(&a, &key).await.expect("A answers");
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "A keeps refusing");
        assert_eq!(
            hits(&backend_hits),
            refused_from,
            "no request with the revoked key reached the backend"
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_created_on_one_node_works_on_the_other() {
    with_postgres(|store| async move {
        let (backend, backend_hits) = Backend::counting().await;
        let (token, token_hash) = admin_token();
        let a = start_node(&store, &backend, &token_hash).await;
        let b = start_node(&store, &backend, &token_hash).await;
        let admin_b = Admin::of(&b, &token);

        let consumer = admin_b.create_consumer("made-on-b").await;
        let created = Instant::now();
        let (_key_id, key) = admin_b.create_key(&consumer).await;
        let took = time_until(&a, &key, StatusCode::OK, created, Duration::from_secs(5))
            .await
            .expect("A accepts the key made on B within 5 s");
        println!("a key made on B worked on A after {} ms", took.as_millis());
        assert!(
            took < CLUSTER_BOUND,
            "A accepted the key only after {took:?} (bound {CLUSTER_BOUND:?})"
        );
        assert_eq!(
            call(&b, &key).await.map(|a| a.0),
            Some(StatusCode::OK),
            "B accepts its own key"
        );

        let disabling = Instant::now();
        let (status, body) = admin_b
            .post(&format!("/v1/consumers/{consumer}/disable"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "disable: {body}");
        assert!(
            body["consumer"]["disabled_at"].is_i64(),
            "disabled_at set: {body}"
        );
        assert_eq!(
            call(&b, &key).await,
            Some((StatusCode::UNAUTHORIZED, "invalid_credentials".to_owned())),
            "B refuses a disabled consumer's key at once"
        );
        let took = time_until(
            &a,
            &key,
            StatusCode::UNAUTHORIZED,
            disabling,
            Duration::from_secs(5),
        )
        .await
        .expect("A refuses the disabled consumer's key within 5 s");
        println!("disabling on B reached A after {} ms", took.as_millis());
        assert!(
            took < CLUSTER_BOUND,
            "A refused only after {took:?} (bound {CLUSTER_BOUND:?})"
        );
        let refused_from = hits(&backend_hits);
        assert_eq!(
            call(&a, &key).await.map(|a| a.0),
            Some(StatusCode::UNAUTHORIZED),
            "A keeps refusing"
        );
        assert_eq!(hits(&backend_hits), refused_from, "nothing forwarded");
    })
    .await;
}

/// Counts statements that update `api_keys` in the test's schema (a test
/// trigger; the gateway does not know it is there).
async fn count_key_updates(pool: &sqlx::PgPool, schema: &str) {
    let statements = [
        format!("CREATE TABLE \"{schema}\".it_key_updates (rows bigint NOT NULL)"),
        format!(
            "CREATE FUNCTION \"{schema}\".it_count_key_updates() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO \"{schema}\".it_key_updates SELECT count(*) FROM changed; \
             RETURN NULL; END $$"
        ),
        format!(
            "CREATE TRIGGER it_count_key_updates AFTER UPDATE ON \"{schema}\".api_keys \
             REFERENCING NEW TABLE AS changed FOR EACH STATEMENT \
             EXECUTE FUNCTION \"{schema}\".it_count_key_updates()"
        ),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(pool).await.expect("test trigger");
    }
}

/// (statements, rows) counted by [`count_key_updates`] so far.
async fn key_updates(pool: &sqlx::PgPool, schema: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(rows), 0)::bigint FROM \"{schema}\".it_key_updates"
    ))
    .fetch_one(pool)
    .await
    .expect("read the update count")
}

#[tokio::test]
async fn last_used_is_written_in_batches() {
    with_postgres(|store| async move {
        let (backend, backend_hits) = Backend::counting().await;
        let (token, token_hash) = admin_token();
        let a = start_node(&store, &backend, &token_hash).await;
        let admin_a = Admin::of(&a, &token);
        let pool = store.pool().await;
        count_key_updates(&pool, &store.schema).await;

        let consumer = admin_a.create_consumer("busy").await;
        let (key_id, key) = admin_a.create_key(&consumer).await;
        let before = admin_a.key(&key_id).await;
        assert!(before["last_used_at"].is_null(), "unused key: {before}");
        let created_at = before["created_at"].as_i64().expect("created_at");

        const N: usize = 20;
        let started = Instant::now();
        for i in 0..N {
            let answer = call(&a, &key).await.map(|a| a.0);
            assert_eq!(answer, Some(StatusCode::OK), "request {i}");
        }
        let requests_took = started.elapsed();
        let last_request = Instant::now();
        assert_eq!(hits(&backend_hits), N, "every request was forwarded");

        let used = eventually(3, || async {
            let k = admin_a.key(&key_id).await;
            k["last_used_at"].as_i64()
        })
        .await;
        let recorded_after = last_request.elapsed();
        let used = used.expect("last_used_at is written within 3 s");
        println!(
            "{N} requests in {} ms; last_used_at visible {} ms after the last one",
            requests_took.as_millis(),
            recorded_after.as_millis()
        );
        assert!(
            recorded_after < Duration::from_secs(1),
            "last_used_at took {recorded_after:?} with a 200 ms flush period"
        );
        let now = unix_now();
        assert!(
            created_at <= used && used <= now,
            "created {created_at} <= last used {used} <= now {now}"
        );

        // Batched: a statement per flush period at most, not one per request.
        let (statements, rows) = key_updates(&pool, &store.schema).await;
        let periods = i64::try_from(requests_took.as_millis() / 200).expect("small") + 2;
        println!("{statements} UPDATE statement(s) on api_keys for {N} requests ({rows} rows)");
        assert!(
            (1..=periods).contains(&statements) && statements < i64::try_from(N).expect("small"),
            "{statements} statements for {N} requests over {requests_took:?}"
        );
        assert_eq!(rows, statements, "each batch touched the one key once");

        // Persisted: a new node on the same store sees it.
        assert!(a.shutdown().await, "A drained");
        let c = start_node(&store, &backend, &token_hash).await;
        let admin_c = Admin::of(&c, &token);
        let seen = admin_c.key(&key_id).await;
        // At least what A showed: a batch still pending when A was read is
        // written by A's final flush at shutdown (a later second, under load).
        let stored = seen["last_used_at"].as_i64();
        assert!(
            stored.is_some_and(|s| used <= s && s <= unix_now()),
            "a restarted node reads the stored last_used_at: {stored:?}, A showed {used}"
        );
        assert_eq!(
            call(&c, &key).await.map(|a| a.0),
            Some(StatusCode::OK),
            "the key works on the new node"
        );
        pool.close().await;
    })
    .await;
}

/// Opens the gateway's SQLite file a second time, as `gatehouse keys …` does.
async fn second_sqlite_handle(path: &Path) -> Arc<dyn gatehouse::store::KeyStore> {
    assert!(path.exists(), "the gateway created {}", path.display());
    gatehouse::store::open(&StoreOptions {
        url: path.to_string_lossy().into_owned(),
        schema: None,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .expect("open the gateway's SQLite file")
}

#[tokio::test]
async fn sqlite_cli_write_reaches_the_running_gateway() {
    let (backend, backend_hits) = Backend::counting().await;
    let gw = GatewayBuilder::new()
        .main(API_KEYS_TOML)
        .policy("api.toml", &api_policy(&backend))
        .start()
        .await;
    let cli = second_sqlite_handle(&gw.dir.path().join("gatehouse.db")).await;

    let generated = api_key::generate().expect("generate a key");
    assert_eq!(
        call(&gw, &generated.full).await,
        Some((StatusCode::UNAUTHORIZED, "invalid_credentials".to_owned())),
        "an unknown key is refused"
    );

    let now = unix_now();
    let consumer = Consumer {
        id: format!("c_{}", random_lowercase(16)),
        name: "cli-made".to_owned(),
        plan: None,
        metadata: serde_json::Map::new(),
        created_at: now,
        disabled_at: None,
    };
    cli.create_consumer(&consumer)
        .await
        .expect("create consumer");
    let secret = generated.secret().to_owned();
    let hash = tokio::task::spawn_blocking(move || api_key::hash_secret(&secret, &FAST_ARGON2))
        .await
        .expect("hash task")
        .expect("hash");
    let record = ApiKey {
        id: generated.id.clone(),
        consumer_id: consumer.id.clone(),
        name: "cli".to_owned(),
        scopes: Vec::new(),
        expires_at: None,
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    let written = Instant::now();
    cli.create_key(&record, &hash).await.expect("create key");
    let took = time_until(
        &gw,
        &generated.full,
        StatusCode::OK,
        written,
        Duration::from_secs(5),
    )
    .await
    .expect("the gateway accepts the CLI's key within 5 s");
    println!(
        "a key written by another process worked after {} ms",
        took.as_millis()
    );
    assert!(took < CLUSTER_BOUND, "accepted only after {took:?}");
    assert_eq!(hits(&backend_hits), 1, "forwarded once accepted");

    let revoked = Instant::now();
    let key = cli
        .revoke_key(&generated.id, unix_now())
        .await
        .expect("revoke");
    assert!(key.revoked_at.is_some(), "revoked_at set");
    let took = time_until(
        &gw,
        &generated.full,
        StatusCode::UNAUTHORIZED,
        revoked,
        Duration::from_secs(5),
    )
    .await
    .expect("the gateway refuses the revoked key within 5 s");
    println!(
        "a revocation by another process applied after {} ms",
        took.as_millis()
    );
    assert!(took < CLUSTER_BOUND, "refused only after {took:?}");
    let refused_from = hits(&backend_hits);
    assert_eq!(
        call(&gw, &generated.full).await,
        Some((StatusCode::UNAUTHORIZED, "invalid_credentials".to_owned())),
        "still refused"
    );
    assert_eq!(hits(&backend_hits), refused_from, "nothing forwarded");
}
