//! Observability tests: the status page in a real browser (Chromium over
//! WebDriver).

use std::process::{Command, Stdio};

use crate::support::*;

use super::*;

/// A minimal WebDriver client (the W3C protocol is JSON over HTTP).
pub(super) struct WebDriver {
    pub(super) base: String,
    pub(super) session: String,
    pub(super) http: reqwest::Client,
}

impl WebDriver {
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub(super) async fn text_of(&self, css: &str) -> String {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test]
async fn the_status_page_works_in_a_real_browser() {
    let Some(driver) = tool("chromedriver", "Debian package chromium-driver") else {
        return;
    };
    if tool("chromium", "Debian package chromium").is_none() {
        return;
    }
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = mixed_gateway(&backend, "")
        .await
        .admin_token_hash(&hash)
        .start()
        .await;
    let port = free_port().await;
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Reaped(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let profile = tempfile::tempdir().unwrap();
    let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())]
        },
        "goog:loggingPrefs": {"browser": "ALL"}
    }}});
    let session = eventually(20, || async {
        let resp = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        v["value"]["sessionId"].as_str().map(str::to_owned)
    })
    .await
    .expect("a WebDriver session");
    let wd = WebDriver {
        base: base.clone(),
        session,
        http: http.clone(),
    };
    let admin = gw.running().admin_addr;
    wd.call(
        reqwest::Method::POST,
        "/url",
        Some(serde_json::json!({"url": format!("http://admin:{token}@{admin}/")})),
    )
    .await;
    let title = wd.call(reqwest::Method::GET, "/title", None).await;
    assert_eq!(title, "gatehouse status");
    let routes = wd.text_of("#routes").await;
    assert!(
        routes.contains("limited") && routes.contains("/ok*"),
        "{routes}"
    );
    let upstreams = wd.text_of("#upstreams").await;
    assert!(
        upstreams.contains("good") && upstreams.contains(&backend.url()),
        "{upstreams}"
    );
    assert!(upstreams.contains("healthy"), "{upstreams}");
    let before: u64 = wd.text_of("#requests-5m").await.parse().unwrap();

    for _ in 0..5 {
        let _ = http.get(gw.url("/ok")).send().await.unwrap().bytes().await;
    }
    // The page refreshes itself every five seconds.
    let after = eventually(20, || async {
        let n: u64 = wd.text_of("#requests-5m").await.parse().ok()?;
        (n >= before + 5).then_some(n)
    })
    .await;
    assert!(after.is_some(), "the page never showed the new requests");
    let refused = wd.text_of("#refused").await;
    assert!(refused.contains("client"), "{refused}");

    let logs = wd
        .call(
            reqwest::Method::POST,
            "/se/log",
            Some(serde_json::json!({"type": "browser"})),
        )
        .await;
    let severe: Vec<&serde_json::Value> = logs
        .as_array()
        .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(logs.is_array(), "browser log readable: {logs}");
    assert!(severe.is_empty(), "console errors: {severe:?}");
    let _ = http
        .delete(format!("{base}/session/{}", wd.session))
        .send()
        .await;
    gw.shutdown().await;
}
