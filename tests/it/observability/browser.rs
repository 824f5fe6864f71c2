//! Observability tests: the status page in a real browser (Chromium over
//! WebDriver).

use crate::support::*;

use super::*;

#[tokio::test]
async fn the_status_page_works_in_a_real_browser() {
    let Some(wd) = Browser::start().await else {
        return;
    };
    let backend = Backend::echo().await;
    let (token, hash) = admin_token();
    let gw = mixed_gateway(&backend, "")
        .await
        .admin_token_hash(&hash)
        .start()
        .await;
    let http = client();
    let admin = gw.running().admin_addr;
    wd.goto(&format!("http://admin:{token}@{admin}/")).await;
    assert_eq!(wd.title().await, "gatehouse status");
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

    let severe = wd.severe_logs().await;
    assert!(severe.is_empty(), "console errors: {severe:?}");
    wd.quit().await;
    gw.shutdown().await;
}
