//! Usage metering end to end: requests through the gateway with an API
//! key, counted, flushed to the SQLite store, and read back through the
//! admin API and `gatehouse usage`; a graceful stop flushes what is left.

use serde_json::{Value, json};

use crate::admin::cli;
use crate::support::*;

struct Setup {
    gw: TestGateway,
    admin: AdminApi,
    _backend: Backend,
}

/// A gateway metering usage (flushing every `flush`), with a key route
/// `/key` limited to 2 requests a minute per consumer, and an open `/open`.
async fn setup(flush: &str) -> Setup {
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&format!(
            "{}\n[usage]\nflush_interval = \"{flush}\"\n",
            fast_api_keys("")
        ))
        .policy(
            "a.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\
                 [[route]]\nname = \"key\"\nprefix = \"/key\"\nupstream = \"b\"\nauth = \"api_key\"\n\
                 [[route]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"b\"\n\
                 [[rate_limit]]\nname = \"per-consumer\"\nrate = \"1/min\"\nburst = 2\nkey = \"consumer\"\nroutes = [\"key\"]\n",
                backend.url()
            ),
        )
        .start()
        .await;
    let admin = AdminApi::new(&gw, &token);
    Setup {
        gw,
        admin,
        _backend: backend,
    }
}

async fn call(gw: &TestGateway, path: &str, key: Option<&str>) -> u16 {
    let mut req = client().get(gw.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    status
}

#[tokio::test]
async fn usage_is_counted_flushed_and_read_back() {
    let s = setup("1s").await;
    let consumer = s.admin.create_consumer("acme").await;
    let (key_id, key) = s.admin.create_key("acme", json!({})).await;
    let statuses = [
        call(&s.gw, "/key/a", Some(&key)).await,
        call(&s.gw, "/key/b", Some(&key)).await,
        call(&s.gw, "/key/c", Some(&key)).await,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    // Not metered: an anonymous caller, and a refused key.
    assert_eq!(call(&s.gw, "/open/x", None).await, 200);
    assert_eq!(call(&s.gw, "/key/a", Some("gh_wrong")).await, 401);

    let total = eventually(20, || async {
        let (status, body) = s.admin.get("/v1/consumers/acme/usage?by=hour").await;
        assert_eq!(status, 200, "{body}");
        (body["total"]["requests"] == 3).then_some(body)
    })
    .await
    .expect("the usage reached the store");
    assert_eq!(total["consumer_id"], consumer.as_str());
    let t = &total["total"];
    assert_eq!(
        (
            &t["status_2xx"],
            &t["status_4xx"],
            &t["status_5xx"],
            &t["rate_limited"]
        ),
        (&json!(2), &json!(1), &json!(0), &json!(1)),
        "{t}"
    );
    assert!(t["bytes_out"].as_u64().unwrap() > 0, "{t}");
    let buckets = total["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "one hour: {total}");
    assert_eq!(buckets[0]["start"].as_i64().unwrap() % 3_600, 0);

    let (_, per_key) = s
        .admin
        .get(&format!(
            "/v1/consumers/{consumer}/usage?by=day&per_key=true&since=1d"
        ))
        .await;
    let rows = per_key["buckets"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{per_key}");
    assert_eq!(rows[0]["key_id"], key_id.as_str());
    assert_eq!(rows[0]["requests"], 3);

    let bad: [(&str, &str); 3] = [
        ("/v1/consumers/acme/usage?since=yesterday", "since"),
        ("/v1/consumers/acme/usage?by=week", "by"),
        ("/v1/consumers/acme/usage?color=red", "query"),
    ];
    for (path, field) in bad {
        let (status, body) = s.admin.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["fields"][field].is_array(), "{path}: {body}");
    }
    let (status, body) = s.admin.get("/v1/consumers/nobody/usage").await;
    assert_eq!(status, 404, "{body}");

    // The refusal is remembered for the console.
    let meter = s.gw.running().shared().usage().expect("metering is on");
    let refusals = meter.recent_refusals(&consumer);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        (refusals[0].status, refusals[0].code),
        (429, "rate_limited")
    );
    assert_eq!(refusals[0].route.as_deref(), Some("key"));

    // The CLI reads the same store.
    let config = s.gw.dir.path().join("gatehouse.toml");
    let out = cli(
        Some(&config),
        &[
            "usage",
            "--consumer",
            "acme",
            "--by",
            "day",
            "--output",
            "csv",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("start,requests,status_2xx,"), "{csv}");
    assert!(lines[1].contains("T00:00:00Z,3,2,0,1,0,"), "{csv}");

    let out = cli(
        Some(&config),
        &[
            "usage",
            "--consumer",
            &consumer,
            "--since",
            "2d",
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
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["consumer"], "acme");
    assert_eq!(v["total"]["rate_limited"], 1);

    let out = cli(
        Some(&config),
        &["usage", "--consumer", "acme", "--since", "soon"],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_graceful_stop_saves_the_last_usage() {
    // The interval is never reached: only the final flush can save it.
    let s = setup("1h").await;
    let consumer = s.admin.create_consumer("late").await;
    let (_, key) = s.admin.create_key("late", json!({})).await;
    assert_eq!(call(&s.gw, "/key/a", Some(&key)).await, 200);
    assert_eq!(call(&s.gw, "/key/b", Some(&key)).await, 200);
    let store = open_store(s.gw.dir.path()).await;
    let before = store
        .usage(&consumer, 0, gatehouse::store::UsageGrain::Day)
        .await
        .unwrap();
    assert!(before.is_empty(), "not flushed yet: {before:?}");
    let Setup { gw, .. } = s;
    let (drained, dir) = gw.stop_keeping_dir().await;
    assert!(drained);
    let rows = store
        .usage(&consumer, 0, gatehouse::store::UsageGrain::Day)
        .await
        .unwrap();
    let requests: u64 = rows.iter().map(|r| r.counts.requests).sum();
    assert_eq!(requests, 2, "{rows:?}");
    drop(dir);
}
