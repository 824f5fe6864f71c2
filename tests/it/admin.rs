//! The admin API (token, validation, keys shown once, rotation, audit
//! trail) and the CLI working on the store of a running gateway.
//!
//! Keys and tokens are secrets: they are compared with `assert!(a == b)`
//! and never put in a failure message.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gatehouse::auth::api_key::{self, Argon2Settings, verify_admin_token};
use serde_json::{Value, json};

use crate::support::*;

struct Setup {
    gw: TestGateway,
    admin: AdminApi,
    token: String,
    hits: Arc<AtomicUsize>,
    _backend: Backend,
}

/// A gateway with an admin token and a key route `/key` (scope `a` on
/// `/scoped`).
async fn setup(api_keys_extra: &str) -> Setup {
    let (backend, hits) = Backend::counting().await;
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(api_keys_extra))
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"key\"\nprefix = \"/key\"\nupstream = \"b\"\nauth = \"api_key\"\n\
                 [[route]]\nname = \"scoped\"\nprefix = \"/scoped\"\nupstream = \"b\"\nauth = \"api_key\"\nscopes = [\"a\"]\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    Setup {
        gw,
        admin,
        token,
        hits,
        _backend: backend,
    }
}

/// The status of `GET path` on the gateway with the key in `x-api-key`.
async fn use_key(gw: &TestGateway, path: &str, key: &str) -> u16 {
    client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn admin_api_needs_the_token() {
    let s = setup("").await;
    let url = s.gw.admin_url("/v1/consumers");
    let c = client();
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("wrong token", Some("Bearer not-the-token".into()), 401),
        ("empty bearer", Some("Bearer ".into()), 401),
        ("token without scheme", Some(s.token.clone()), 401),
        ("basic scheme", Some(format!("Basic {}", s.token)), 401),
        ("right token", Some(format!("Bearer {}", s.token)), 200),
        (
            "scheme in lower case",
            Some(format!("bearer {}", s.token)),
            200,
        ),
    ];
    for (case, auth, status) in cases {
        let mut req = c.get(&url);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{case}");
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap();
        if status == 401 {
            assert_eq!(
                challenge.as_deref(),
                Some("Bearer realm=\"gatehouse-admin\""),
                "{case}"
            );
            assert_eq!(body["error"], "unauthorized", "{case}");
        } else {
            assert!(body["consumers"].is_array(), "{case}: {body}");
        }
    }
    let health = c.get(s.gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Without a token hash the management API is closed; health is not.
    let gw = GatewayBuilder::new().start().await;
    let resp = c
        .get(gw.admin_url("/v1/consumers"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "admin_disabled");
    let health = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn bad_input_is_refused_field_by_field_and_writes_nothing() {
    let s = setup("").await;
    s.admin.create_consumer("acme").await;
    let (_, before) = s.admin.get("/v1/consumers").await;
    let (_, audit_before) = s.admin.get("/v1/audit").await;
    assert_eq!(before["consumers"].as_array().unwrap().len(), 1);
    let url = s.gw.admin_url("/v1/consumers");
    let c = client();
    let long_name = format!(r#"{{"name": "{}"}}"#, "a".repeat(65));
    let cases: Vec<(&str, &str, &str)> = vec![
        ("empty name", r#"{"name": ""}"#, "name"),
        ("space in name", r#"{"name": "a b"}"#, "name"),
        ("leading dash", r#"{"name": "-a"}"#, "name"),
        ("name too long", &long_name, "name"),
        ("bad plan", r#"{"name": "ok", "plan": "g/old"}"#, "plan"),
        (
            "unknown field",
            r#"{"name": "ok", "colour": "red"}"#,
            "body",
        ),
        ("no name", r#"{}"#, "body"),
        ("not JSON", "name=ok", "body"),
        (
            "metadata not an object",
            r#"{"name": "ok", "metadata": [1]}"#,
            "body",
        ),
    ];
    for (case, text, field) in cases {
        let resp = c
            .post(&url)
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .body(text.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{case}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_input", "{case}: {body}");
        let messages = &body["fields"][field];
        assert!(
            messages
                .as_array()
                .is_some_and(|m| !m.is_empty()
                    && m.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty()))),
            "{case}: messages for `{field}` in {body}"
        );
        let (_, now) = s.admin.get("/v1/consumers").await;
        assert_eq!(now, before, "{case}: the store changed");
    }

    // A duplicate name: 409, nothing written.
    let (st, v) = s.admin.post("/v1/consumers", json!({"name": "acme"})).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "conflict");
    let (_, now) = s.admin.get("/v1/consumers").await;
    assert_eq!(now, before, "duplicate: the store changed");

    // Keys: unknown consumer, bad key input.
    let (st, v) = s.admin.post("/v1/consumers/nobody/keys", json!({})).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"], "not_found");
    let key_cases = [
        ("bad scope", json!({"scopes": ["a b"]}), "scopes"),
        ("bad expiry", json!({"expires_in": "soon"}), "expires_in"),
        ("unknown field", json!({"secret": "mine"}), "body"),
    ];
    for (case, input, field) in key_cases {
        let (st, v) = s.admin.post("/v1/consumers/acme/keys", input).await;
        assert_eq!(st, 400, "{case}: {v}");
        assert!(v["fields"][field].is_array(), "{case}: {v}");
    }
    let (_, keys) = s.admin.get("/v1/keys").await;
    assert_eq!(keys["keys"], json!([]), "no key was written");
    let (_, audit) = s.admin.get("/v1/audit?limit=1000").await;
    let count = |v: &Value| v["entries"].as_array().map_or(0, Vec::len);
    assert!(count(&audit) > count(&audit_before), "refusals are audited");
    let refused_creates = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "consumer.create" && e["outcome"] == "invalid_input")
        .count();
    assert_eq!(refused_creates, 9, "every refused create is audited");
}

#[tokio::test]
async fn keys_are_shown_once_and_rotation_keeps_the_old_key_for_its_grace() {
    let s = setup("").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (id, key) = s.admin.create_key("acme", json!({"scopes": ["a"]})).await;
    assert!(key.len() == api_key::KEY_LEN && key.starts_with("gth_"));
    assert!(key[4..4 + api_key::ID_LEN] == *id, "key id is in the key");
    assert!(api_key::parse(&key).is_ok(), "well-formed key");
    let secret = &key[4 + api_key::ID_LEN..4 + api_key::ID_LEN + api_key::SECRET_LEN];
    assert_eq!(use_key(&s.gw, "/scoped/x", &key).await, 200);

    for path in [
        format!("/v1/keys/{id}"),
        "/v1/keys".to_owned(),
        format!("/v1/consumers/{consumer}"),
        format!("/v1/consumers/{consumer}/keys"),
        "/v1/audit".to_owned(),
    ] {
        let (st, text) = s.admin.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(st, 200, "{path}");
        assert!(!text.contains(&key), "{path} shows the key");
        assert!(!text.contains(secret), "{path} shows the key's secret");
        assert!(text.contains(&id), "{path} lists the key id");
        assert!(!text.contains("api_key\""), "{path} has an api_key field");
    }
    let (_, v) = s.admin.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(v["key"]["scopes"], json!(["a"]));
    assert_eq!(v["key"]["consumer_id"], consumer.as_str());
    assert!(v["key"].get("hash").is_none(), "hash listed: {v}");

    // Rotation with a long grace: both keys work.
    let (st, v) = s
        .admin
        .post(&format!("/v1/keys/{id}/rotate"), json!({"grace": "1h"}))
        .await;
    assert!(st == 201, "rotate: {st} {}", v["error"]);
    let second_id = v["key"]["id"].as_str().unwrap().to_owned();
    let second = v["api_key"].as_str().unwrap().to_owned();
    assert!(second != key, "rotation made a new key");
    assert_eq!(v["previous"]["id"], id.as_str());
    let grace_end = v["previous"]["expires_at"].as_i64().unwrap();
    assert!(
        (3590..=3610).contains(&(grace_end - unix_now())),
        "{grace_end}"
    );
    assert_eq!(v["key"]["scopes"], json!(["a"]), "scopes carried over");
    assert_eq!(use_key(&s.gw, "/scoped/x", &second).await, 200, "new key");
    assert_eq!(
        use_key(&s.gw, "/scoped/x", &key).await,
        200,
        "old key in grace"
    );

    // Rotation with a 1 s grace: the previous key stops soon after.
    let (st, v) = s
        .admin
        .post(
            &format!("/v1/keys/{second_id}/rotate"),
            json!({"grace": "1s"}),
        )
        .await;
    assert!(st == 201, "rotate: {st} {}", v["error"]);
    let third = v["api_key"].as_str().unwrap().to_owned();
    assert_eq!(use_key(&s.gw, "/scoped/x", &third).await, 200, "third key");
    let stopped = eventually(4, || async {
        (use_key(&s.gw, "/scoped/x", &second).await == 401).then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "the rotated key still works after its grace"
    );
    assert_eq!(use_key(&s.gw, "/scoped/x", &third).await, 200, "third key");
    // The first key's own grace (1 h) is untouched.
    assert_eq!(use_key(&s.gw, "/scoped/x", &key).await, 200, "first key");

    // A revoked key cannot be rotated.
    let (st, _) = s
        .admin
        .post(&format!("/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .admin
        .post(&format!("/v1/keys/{id}/rotate"), json!({}))
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "key_revoked");
    let before = s.hits.load(Ordering::SeqCst);
    assert_eq!(use_key(&s.gw, "/scoped/x", &key).await, 401, "revoked key");
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        before,
        "revoked key reached upstream"
    );
}

#[tokio::test]
async fn bad_key_and_rotation_input_is_refused_and_writes_nothing() {
    let s = setup("").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (id, _key) = s.admin.create_key(&consumer, json!({})).await;
    let (_, keys_before) = s.admin.get("/v1/keys").await;
    let url = s.gw.admin_url(&format!("/v1/keys/{id}/rotate"));
    let cases: Vec<(&str, Option<&str>, &str, &str)> = vec![
        (
            "bad grace",
            Some("application/json"),
            r#"{"grace": "soon"}"#,
            "grace",
        ),
        (
            "zero grace",
            Some("application/json"),
            r#"{"grace": "0s"}"#,
            "grace",
        ),
        (
            "unknown field",
            Some("application/json"),
            r#"{"grace": "1h", "keep_secret": true}"#,
            "body",
        ),
        ("not JSON", Some("application/json"), "grace=1h", "body"),
        (
            "not a JSON content type",
            Some("text/plain"),
            r#"{"grace": "1h"}"#,
            "body",
        ),
    ];
    for (case, content_type, text, field) in cases {
        let mut req = client()
            .post(&url)
            .bearer_auth(&s.token)
            .body(text.to_owned());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 400, "{case}: {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{case}: not a JSON error body: {text}"));
        assert_eq!(body["error"], "invalid_input", "{case}: {body}");
        assert!(body["fields"][field].is_array(), "{case}: {body}");
        let (_, keys) = s.admin.get("/v1/keys").await;
        assert_eq!(keys, keys_before, "{case}: the store changed");
    }
    let (_, audit) = s.admin.get("/v1/audit").await;
    let refused = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "key.rotate" && e["outcome"] == "invalid_input")
        .count();
    assert_eq!(refused, 5, "every refused rotation is audited: {audit}");

    // Keys for a disabled or unknown consumer.
    let (st, _) = s
        .admin
        .post(&format!("/v1/consumers/{consumer}/disable"), json!({}))
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .admin
        .post(&format!("/v1/consumers/{consumer}/keys"), json!({}))
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "consumer_disabled");
    let (st, v) = s
        .admin
        .post("/v1/consumers/nobody/disable", json!({}))
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.admin.post("/v1/keys/nokey/revoke", json!({})).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.admin.post("/v1/keys/nokey/rotate", json!({})).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.admin.get("/v1/keys/nokey").await;
    assert_eq!(st, 404, "{v}");
    let (_, keys) = s.admin.get("/v1/keys").await;
    assert_eq!(keys, keys_before, "the store changed");
}

#[tokio::test]
async fn audit_trail_names_actions_outcomes_and_callers_but_no_secrets() {
    let s = setup("").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (id, key) = s.admin.create_key(&consumer, json!({})).await;
    let (st, _) = s
        .admin
        .post(&format!("/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(st, 200);
    let wrong = AdminApi::new(&s.gw, "wrong-admin-token-value");
    let (st, _) = wrong
        .post("/v1/consumers", json!({"name": "intruder"}))
        .await;
    assert_eq!(st, 401);

    let (st, text) = s
        .admin
        .call(reqwest::Method::GET, "/v1/audit?limit=50", None)
        .await;
    assert_eq!(st, 200);
    for (what, secret) in [
        ("the key", key.as_str()),
        ("the admin token", s.token.as_str()),
        ("the wrong token", "wrong-admin-token-value"),
    ] {
        assert!(!text.contains(secret), "{what} in the audit trail");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} entry in {v}"))
    };
    let created = find("consumer.create", "ok");
    assert_eq!(created["target"], consumer.as_str());
    assert_eq!(created["actor"], "admin-token");
    assert_eq!(created["client"], "127.0.0.1");
    assert!(
        created["at"]
            .as_i64()
            .is_some_and(|t| (t - unix_now()).abs() < 60)
    );
    let key_created = find("key.create", "ok");
    assert_eq!(key_created["target"], id.as_str());
    let revoked = find("key.revoke", "ok");
    assert_eq!(revoked["target"], id.as_str());
    assert_eq!(revoked["actor"], "admin-token");
    let refused = find("consumer.create", "unauthorized");
    assert_eq!(refused["actor"], "anonymous");
    assert_eq!(refused["client"], "127.0.0.1");
    // Newest first.
    let pos = |e: &Value| entries.iter().position(|x| x == e).unwrap();
    assert!(pos(refused) < pos(revoked) && pos(revoked) < pos(created));
    // The refused call wrote nothing.
    let (_, list) = s.admin.get("/v1/consumers").await;
    assert_eq!(list["consumers"].as_array().unwrap().len(), 1);
}

/// Runs the CLI (blocking, off the runtime), with `--config` if given.
pub(crate) async fn cli(config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let input = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn gatehouse");
        if let Some(text) = input {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("gatehouse output")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cli_manages_the_store_of_a_running_gateway() {
    // Polling for the new key presents an unknown id until the gateway has
    // loaded it: give the failure gate room.
    let s = setup("failure_burst = 1000").await;
    let config = s.gw.dir.path().join("gatehouse.toml");

    let out = cli(
        Some(&config),
        &["consumers", "create", "--name", "x", "--output", "json"],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consumer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(consumer["name"], "x");
    let consumer_id = consumer["id"].as_str().unwrap().to_owned();
    assert!(consumer_id.starts_with("c_"), "{consumer}");

    let out = cli(
        Some(&config),
        &[
            "keys",
            "create",
            "--consumer",
            "x",
            "--scope",
            "a",
            "--output",
            "json",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["key"]["consumer_id"], consumer_id.as_str());
    assert_eq!(created["key"]["scopes"], json!(["a"]));

    let started = std::time::Instant::now();
    let works = eventually(3, || async {
        (use_key(&s.gw, "/scoped/x", &key).await == 200).then_some(())
    })
    .await;
    assert!(works.is_some(), "a CLI-made key works within 3 s");
    let picked_up = started.elapsed();

    let out = cli(Some(&config), &["keys", "list", "--output", "json"], None).await;
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains(&key), "keys list shows the key");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, [key_id.as_str()]);

    // The admin API sees what the CLI wrote.
    let (_, v) = s.admin.get(&format!("/v1/keys/{key_id}")).await;
    assert_eq!(v["key"]["consumer_id"], consumer_id.as_str());

    let out = cli(Some(&config), &["keys", "revoke", &key_id], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = std::time::Instant::now();
    let refused = eventually(2, || async {
        (use_key(&s.gw, "/scoped/x", &key).await == 401).then_some(())
    })
    .await;
    assert!(refused.is_some(), "a CLI-revoked key is refused within 2 s");
    let revoke_took = revoked_at.elapsed();

    // A bad name: non-zero exit, the field named, nothing written.
    let out = cli(
        Some(&config),
        &["consumers", "create", "--name", "a b"],
        None,
    )
    .await;
    assert!(!out.status.success(), "bad name accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("name:"), "stderr names the field: {stderr}");
    let out = cli(
        Some(&config),
        &["consumers", "list", "--output", "json"],
        None,
    )
    .await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["x"], "a refused create wrote a consumer");

    // The CLI's writes are audited too.
    let (_, audit) = s.admin.get("/v1/audit").await;
    let cli_revoke = audit["entries"].as_array().unwrap().iter().any(|e| {
        e["action"] == "key.revoke" && e["actor"].as_str().is_some_and(|a| a.starts_with("cli:"))
    });
    assert!(cli_revoke, "CLI revoke in the audit trail: {audit}");

    // hash-secret: reads one line, prints an argon2id PHC string.
    let secret = format!("{:032x}", rand::random::<u128>());
    let out = cli(None, &["hash-secret"], Some(&format!("{secret}\n"))).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        phc.starts_with("$argon2id$v=19$"),
        "not an argon2id PHC string"
    );
    assert!(!phc.contains(&secret), "the hash holds the secret");
    let settings = Argon2Settings::default();
    assert!(
        verify_admin_token(&secret, &phc, &settings).is_ok(),
        "hash verifies"
    );
    assert!(
        verify_admin_token("another-secret-value", &phc, &settings).is_err(),
        "hash verifies another secret"
    );
    let out = cli(None, &["hash-secret"], Some("short\n")).await;
    assert!(!out.status.success(), "a short secret was hashed");
    eprintln!("CLI key picked up in {picked_up:?}, revocation in {revoke_took:?}");
}
