//! Reload, shutdown, the access log and `gatehouse check`, including the
//! real binary driven by signals.

use std::time::Duration;

use http::Response;
use tokio::process::Command;

use crate::support::*;

fn upstream(url: &str) -> String {
    format!("[[upstream]]\nname = \"b\"\ntargets = [\"{url}\"]\n")
}

fn route(name: &str, prefix: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"b\"\n")
}

#[tokio::test]
async fn bad_policy_on_reload_keeps_the_old_routes() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!("{}{}", upstream(&backend.url()), route("old", "/old")),
        )
        .start()
        .await;
    let c = client();
    assert_eq!(c.get(gw.url("/old/x")).send().await.unwrap().status(), 200);

    // A broken file: unknown key. The reload is refused with file:line:col.
    std::fs::write(
        gw.policy_path("b.toml"),
        "[[route]]\nname = \"new\"\nprefx = \"/new\"\n",
    )
    .unwrap();
    let err = gw.running().reload().await.expect_err("reload must fail");
    let text = err.to_string();
    assert!(text.contains("b.toml:3:1: unknown field `prefx`"), "{text}");
    assert_eq!(gw.running().shared().generation(), 1);
    assert_eq!(
        c.get(gw.url("/old/x")).send().await.unwrap().status(),
        200,
        "old route still served"
    );
    assert_eq!(c.get(gw.url("/new/x")).send().await.unwrap().status(), 404);

    // A semantic error (unknown upstream) is refused too.
    std::fs::write(
        gw.policy_path("b.toml"),
        "[[route]]\nname = \"new\"\nprefix = \"/new\"\nupstream = \"nope\"\n",
    )
    .unwrap();
    let err = gw.running().reload().await.expect_err("reload must fail");
    assert!(
        err.to_string()
            .contains("b.toml:4:12: route `new`: unknown upstream `nope`"),
        "{err}"
    );

    // Fixed: the new route appears, the old one stays.
    std::fs::write(gw.policy_path("b.toml"), route("new", "/new")).unwrap();
    assert_eq!(gw.running().reload().await.unwrap(), 2);
    assert_eq!(c.get(gw.url("/new/x")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/old/x")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn policy_file_change_is_picked_up_by_the_watcher() {
    let backend = Backend::echo().await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!("{}{}", upstream(&backend.url()), route("one", "/one")),
        )
        .start_watching()
        .await;
    let c = client();
    std::fs::write(gw.policy_path("b.toml"), route("two", "/two")).unwrap();
    let served = eventually(10, || async {
        let s = c.get(gw.url("/two/x")).send().await.ok()?.status();
        (s == 200).then_some(())
    })
    .await;
    assert!(served.is_some(), "new route served after the file changed");
    // An invalid edit is ignored: both routes keep working.
    std::fs::write(gw.policy_path("b.toml"), "this is = = not toml").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.get(gw.url("/two/x")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/one/x")).send().await.unwrap().status(), 200);
    assert_eq!(gw.running().shared().generation(), 2);
}

#[tokio::test]
async fn requests_in_flight_finish_on_their_snapshot_across_a_reload() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("slow done"))
    })
    .await;
    let gw = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!("{}{}", upstream(&slow.url()), route("slow", "/slow")),
        )
        .start()
        .await;
    let url = gw.url("/slow/x");
    let in_flight = tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Replace the route by a direct answer while the request is upstream.
    std::fs::write(
        gw.policy_path("a.toml"),
        "[[route]]\nname = \"slow\"\nprefix = \"/slow\"\nrespond = { status = 200, body = \"direct\" }\n",
    )
    .unwrap();
    gw.running().reload().await.unwrap();
    assert_eq!(in_flight.await.unwrap(), "slow done");
    let now = client()
        .get(gw.url("/slow/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(now, "direct");
}

#[tokio::test]
async fn duplicates_across_files_name_both_places() {
    let b = GatewayBuilder::new()
        .policy(
            "a.toml",
            &format!("{}{}", upstream("http://127.0.0.1:1"), route("r", "/a")),
        )
        .policy(
            "b.toml",
            &format!("{}{}", upstream("http://127.0.0.1:1"), route("r", "/b")),
        );
    let config = b.write();
    let err =
        gatehouse::server::check(&config, &Default::default()).expect_err("duplicates must fail");
    let text = err.to_string();
    let a = b.path().join("policies/a.toml");
    let bb = b.path().join("policies/b.toml");
    assert!(
        text.contains(&format!(
            "{}:2:8: upstream `b` is already defined at {}:2:8",
            bb.display(),
            a.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:5:8: route `r` is already defined at {}:5:8",
            bb.display(),
            a.display()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("finished"))
    })
    .await;
    let b = GatewayBuilder::new()
        .main("[server]\nshutdown_grace = \"20s\"\n")
        .policy(
            "a.toml",
            &format!("{}{}", upstream(&slow.url()), route("slow", "/")),
        );
    let config = b.write();
    let mut proc = Proc::spawn(&["serve", "--no-watch", "--config", config.to_str().unwrap()]);
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    proc.wait_for("admin listening").await;

    let url = format!("http://{addr}/work");
    let request = tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proc.signal("-TERM");
    proc.wait_for("stopped accepting").await;
    // New connections are refused while the old request drains.
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(refused.is_err(), "listener closed after SIGTERM");
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "finished");
    let (exit, lines) = proc.finish().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        lines.iter().any(|l| l.contains("\"drained\":true")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn access_log_has_the_fields_and_never_the_secrets() {
    let backend = Backend::echo().await;
    let b = GatewayBuilder::new().policy(
        "a.toml",
        &format!("{}{}", upstream(&backend.url()), route("all", "/")),
    );
    let config = b.write();
    let mut proc = Proc::spawn(&["serve", "--no-watch", "--config", config.to_str().unwrap()]);
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let secrets = [
        "Bearer s3cr3t-jwt-token-value",
        "session=s3cr3t-cookie",
        "gh_live_s3cr3t_api_key",
    ];
    let r = client()
        .post(format!("http://{addr}/things/1?x=y"))
        .header("authorization", secrets[0])
        .header("cookie", secrets[1])
        .header("x-api-key", secrets[2])
        .header("x-request-id", "log-test-1")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let line = proc.wait_for("access").await;
    proc.signal("-TERM");
    let (_, lines) = proc.finish().await;
    let cases: [(&str, serde_json::Value); 9] = [
        ("request_id", "log-test-1".into()),
        ("method", "POST".into()),
        ("path", "/things/1".into()),
        ("route", "all".into()),
        ("upstream", "b".into()),
        ("status", 200.into()),
        ("bytes_in", 10.into()),
        ("bytes_out", (body.len() as u64).into()),
        ("tls", "-".into()),
    ];
    for (field, want) in cases {
        assert_eq!(line[field], want, "field {field} in {line}");
    }
    assert!(
        line["duration_us"].as_u64().is_some_and(|d| d > 0),
        "{line}"
    );
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    for (field, want) in [
        ("level", "INFO"),
        ("message", "access"),
        ("target", "gatehouse::access"),
        ("http", "HTTP/1.1"),
        ("error", "-"),
        ("auth", "-"),
    ] {
        assert_eq!(line[field], want, "field {field} in {line}");
    }
    assert_eq!(line["complete"], true, "{line}");
    let stamp = line["timestamp"].as_str().unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
        "{line}"
    );
    assert!(
        line["peer"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{line}"
    );
    for secret in secrets {
        for l in &lines {
            assert!(
                !l.contains(secret.split_once(' ').map_or(secret, |p| p.1)),
                "secret in log: {l}"
            );
        }
    }
}

#[tokio::test]
async fn the_log_filter_can_turn_the_access_log_off() {
    let backend = Backend::echo().await;
    let b = GatewayBuilder::new().policy(
        "a.toml",
        &format!("{}{}", upstream(&backend.url()), route("all", "/")),
    );
    let config = b.write();
    let mut proc = Proc::spawn(&[
        "serve",
        "--no-watch",
        "--log-level",
        "info,gatehouse::access=off",
        "--config",
        config.to_str().unwrap(),
    ]);
    let listening = proc.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let r = client()
        .get(format!("http://{addr}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    proc.signal("-TERM");
    let (status, lines) = proc.finish().await;
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM")),
        "info lines still written: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("gatehouse::access")),
        "access line written: {lines:?}"
    );
}

#[tokio::test]
async fn check_command_reports_file_line_column_and_exits_nonzero() {
    let b = GatewayBuilder::new().policy(
        "bad.toml",
        "[[upstream]]\nname = \"u\"\ntargets = [\"ftp://x\"]\n\n[[route]]\nname = \"r\"\npath = \"/a/../b\"\nupstream = \"u\"\nrespond = { status = 700 }\n",
    );
    let config = b.write();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = b.path().join("policies/bad.toml");
    let f = file.display();
    for want in [
        format!("{f}:3:12: target \"ftp://x\": only http and https are supported"),
        format!("{f}:7:8: route `r`: path `/a/../b` is not normalised (requests arrive as `/b`)"),
        format!("{f}:5:1: route `r`: `upstream` and `respond` exclude each other"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    // A good config passes.
    std::fs::write(
        &file,
        "[[route]]\nname = \"r\"\npath = \"/b\"\nrespond = { status = 204 }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 routes, 0 upstreams)"));
}

#[tokio::test]
async fn the_shipped_quickstart_config_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("gatehouse.toml"),
        dir.path().join("gatehouse.toml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    for entry in std::fs::read_dir(repo.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(
                &path,
                dir.path().join("policies").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let (routes, upstreams) =
        gatehouse::server::check(&dir.path().join("gatehouse.toml"), &Default::default())
            .unwrap_or_else(|p| panic!("the quickstart config is invalid:\n{p}"));
    assert_eq!((routes, upstreams), (4, 1));
    // `check` made the dev issuer's key pair, as `serve` would.
    assert!(dir.path().join("certs/dev-jwt.pem").exists());
    assert!(dir.path().join("certs/dev-jwt-key.pem").exists());
}
