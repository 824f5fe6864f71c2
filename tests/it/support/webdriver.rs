//! A real browser for the tests: headless Chromium driven by chromedriver
//! over the W3C WebDriver protocol (JSON over HTTP), with a throwaway
//! profile. Used by the status page and web console tests.

use std::process::{Command, Stdio};

use super::{Reaped, client, eventually, free_port, tool};

/// A minimal WebDriver client (the W3C protocol is JSON over HTTP).
pub struct WebDriver {
    pub base: String,
    pub session: String,
    pub http: reqwest::Client,
}

impl WebDriver {
    /// One call on the session; its `value`.
    pub async fn call(
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

    /// The id of the first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        el.as_object()
            .filter(|o| !o.contains_key("error"))
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    async fn element(&self, css: &str) -> String {
        match self.find(css).await {
            Some(id) => id,
            None => panic!(
                "no element {css} on {}",
                self.call(reqwest::Method::GET, "/url", None).await
            ),
        }
    }

    /// The text of the first element matching `css` (panics if none).
    pub async fn text_of(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.element_text(&id).await
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await?;
        Some(self.element_text(&id).await)
    }

    async fn element_text(&self, id: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An attribute (or property) of the first element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/property/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            "/url",
            Some(serde_json::json!({ "url": url })),
        )
        .await;
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The current page's title.
    pub async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The title, once it is `want` (a click's navigation may still be
    /// under way when the click returns), or the last one after 10 s.
    pub async fn title_becomes(&self, want: &str) -> String {
        let found = eventually(10, || async {
            let t = self.title().await;
            (t == want).then_some(t)
        })
        .await;
        match found {
            Some(t) => t,
            None => self.title().await,
        }
    }

    /// Waits (at most 10 s) until an element matches `css`; whether one did.
    pub async fn wait_for(&self, css: &str) -> bool {
        eventually(10, || async { self.find(css).await })
            .await
            .is_some()
    }

    /// Clears the input matching `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(serde_json::json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        )
        .await;
    }

    /// Clicks the first element matching `css` (a submit button: the
    /// browser posts the form and loads the answer before this returns).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(serde_json::json!({})),
        )
        .await;
    }

    /// The browser's cookies for the current page.
    pub async fn cookies(&self) -> Vec<serde_json::Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The browser console's entries at level SEVERE (script errors,
    /// refused resources).
    pub async fn severe_logs(&self) -> Vec<serde_json::Value> {
        let logs = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(serde_json::json!({"type": "browser"})),
            )
            .await;
        assert!(logs.is_array(), "browser log readable: {logs}");
        logs.as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Headless Chromium behind a chromedriver of its own, with a fresh profile;
/// both are stopped when dropped.
pub struct Browser {
    pub wd: WebDriver,
    _driver: Reaped,
    _profile: tempfile::TempDir,
}

impl std::ops::Deref for Browser {
    type Target = WebDriver;
    fn deref(&self) -> &WebDriver {
        &self.wd
    }
}

impl Browser {
    /// Starts one, or prints why not and returns `None` when chromium or
    /// chromedriver is not installed.
    pub async fn start() -> Option<Browser> {
        let driver = tool("chromedriver", "Debian package chromium-driver")?;
        tool("chromium", "Debian package chromium")?;
        let port = free_port().await;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Reaped(child);
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
        Some(Browser {
            wd: WebDriver {
                base,
                session,
                http,
            },
            _driver: driver,
            _profile: profile,
        })
    }

    /// Ends the WebDriver session (closing Chromium) before the driver
    /// is killed.
    pub async fn quit(self) {
        let _ = self
            .wd
            .http
            .delete(format!("{}/session/{}", self.wd.base, self.wd.session))
            .send()
            .await;
    }
}
