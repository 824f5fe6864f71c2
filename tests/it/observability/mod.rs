//! Metrics, the status page and their consumers: exact counts on
//! `/metrics`, bounded series, reload gauges, promtool, a real Prometheus
//! scraping the gateway, and the status page in a real browser.

mod browser;
mod metrics;
mod traces;

use std::collections::BTreeSet;

use crate::support::*;

/// The value of the sample line `series` (exactly as rendered), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Every series name with its labels (no comments, no values).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

async fn scrape(gw: &TestGateway) -> String {
    let resp = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics text")
}

/// An address nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Routes: `ok` (open), `keyed` (API key), `limited` (2 then 429), `dead`
/// (an upstream that refuses connections).
async fn mixed_gateway(backend: &Backend, extra_main: &str) -> GatewayBuilder {
    GatewayBuilder::new().main(extra_main).policy(
        "a.toml",
        &format!(
            "[[upstream]]\nname = \"good\"\ntargets = [\"{}\"]\n\
             [[upstream]]\nname = \"gone\"\ntargets = [\"{}\"]\n\
             [[route]]\nname = \"ok\"\nprefix = \"/ok\"\nupstream = \"good\"\n\
             [[route]]\nname = \"keyed\"\nprefix = \"/keyed\"\nupstream = \"good\"\nauth = \"api_key\"\n\
             [[route]]\nname = \"limited\"\nprefix = \"/limited\"\nupstream = \"good\"\nrate_limits = [\"p\"]\n\
             [[route]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"gone\"\n\
             [[rate_limit]]\nname = \"p\"\nrate = \"1/min\"\nburst = 2\nkey = \"client_ip\"\n",
            backend.url(),
            dead_url().await,
        ),
    )
}
