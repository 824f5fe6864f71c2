//! Tests of crate::mod.

use super::*;

use std::path::Path;
use std::sync::Arc;

use crate::config::{Defaults, Problem, SourceFile, UpstreamSpec};

#[test]
fn targets() {
    let cases = [
        (
            "plain",
            "http://127.0.0.1:9000",
            Ok(("http://127.0.0.1:9000", "/x?a=1")),
        ),
        (
            "base path",
            "http://h:1/base/",
            Ok(("http://h:1", "/base/x?a=1")),
        ),
        ("https", "https://h", Ok(("https://h", "/x?a=1"))),
        ("no scheme", "127.0.0.1:9000", Err(())),
        ("ftp", "ftp://h", Err(())),
        ("userinfo", "http://u:p@h", Err(())),
        ("query", "http://h/?a", Err(())),
    ];
    for (name, input, want) in cases {
        let got = Target::parse(input).map_err(|_| ()).map(|t| {
            let uri = t
                .uri("/x", Some("a=1"))
                .map(|u| u.to_string())
                .unwrap_or_default();
            (t.label().to_owned(), uri)
        });
        match (got, want) {
            (Ok((label, uri)), Ok((want_label, want_pq))) => {
                assert_eq!(label, want_label, "{name}");
                assert_eq!(uri, format!("{want_label}{want_pq}"), "{name}");
            }
            (Err(()), Err(())) => {}
            (got, _) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

fn build(text: &str) -> Result<Upstream, Vec<Problem>> {
    let spec: UpstreamSpec = toml::from_str(text).unwrap();
    let source = SourceFile {
        path: "p.toml".into(),
        text: text.to_owned(),
    };
    let registry = UpstreamRegistry::new(Arc::new(crate::telemetry::Metrics::new().unwrap()));
    Upstream::build(
        &spec,
        &Defaults::default(),
        Path::new("/"),
        &source,
        &registry,
        &[],
    )
}

#[test]
fn dns_names_may_be_addresses() {
    for name in ["10.0.0.5", "::1", "[::1]", "api.internal."] {
        let text = format!("name = \"u\"\ndns = {{ name = \"{name}\", port = 80 }}");
        assert!(build(&text).is_ok(), "{name}");
    }
    let text = "name = \"u\"\ndns = { name = \"a:b\", port = 80 }";
    assert!(build(text).is_err());
}

#[test]
fn discovered_targets_carry_their_names_for_a_generation() {
    let u = build(
        "name = \"u\"\ndns = { name = \"api.internal\", srv = true, scheme = \"https\", nameservers = [\"127.0.0.1\"] }",
    )
    .unwrap();
    let found = |url: &str, name: &str| discovery::Found {
        url: url.into(),
        weight: 1,
        name: Some(name.into()),
    };
    let name_of = |u: &Upstream, authority: &str| {
        u.server_names
            .load()
            .get(authority)
            .map(|(n, current)| (n.to_str().into_owned(), *current))
    };
    u.replace_targets(&[
        found("https://10.0.0.1:443", "a.internal"),
        found("https://10.0.0.2:8443", "b.internal"),
    ]);
    let hosts: Vec<_> = u.members().members.iter().map(|m| m.host.clone()).collect();
    assert_eq!(
        hosts,
        vec![
            Some(http::HeaderValue::from_static("a.internal")),
            Some(http::HeaderValue::from_static("b.internal:8443")),
        ],
        "the default port is left out of Host"
    );
    assert_eq!(
        name_of(&u, "10.0.0.1:443"),
        Some(("a.internal".into(), true))
    );
    // b leaves: its name stays one generation for connections made from
    // an older member list, then goes.
    u.replace_targets(&[found("https://10.0.0.1:443", "a.internal")]);
    assert_eq!(
        name_of(&u, "10.0.0.2:8443"),
        Some(("b.internal".into(), false))
    );
    u.replace_targets(&[found("https://10.0.0.1:443", "a.internal")]);
    assert_eq!(name_of(&u, "10.0.0.2:8443"), None);
    assert_eq!(
        name_of(&u, "10.0.0.1:443"),
        Some(("a.internal".into(), true))
    );
}

#[test]
fn hash_keys() {
    let cases = [
        ("client ip", "client_ip", Ok(HashOn::ClientIp)),
        (
            "header",
            "header:x-user",
            Ok(HashOn::Header(http::HeaderName::from_static("x-user"))),
        ),
        ("cookie", "cookie:sid", Ok(HashOn::Cookie("sid".into()))),
        ("empty cookie", "cookie:", Err(())),
        ("bad header", "header:a b", Err(())),
        ("unknown", "path", Err(())),
    ];
    for (name, input, want) in cases {
        assert_eq!(HashOn::parse(input).map_err(|_| ()), want, "{name}");
    }
    let u = build(
        "name = \"u\"\ntargets = [\"http://a:1\"]\nbalance = \"hash\"\nhash_on = \"cookie:sid\"",
    )
    .unwrap();
    let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let mut h = http::HeaderMap::new();
    assert_eq!(u.hash_key(&h, ip), None, "no cookie: round robin");
    h.insert(http::header::COOKIE, "a=1; sid=abc".parse().unwrap());
    let k1 = u.hash_key(&h, ip);
    h.insert(http::header::COOKIE, "sid=abc".parse().unwrap());
    assert!(k1.is_some());
    assert_eq!(u.hash_key(&h, ip), k1, "same cookie, same key");
}

#[test]
fn shifts_and_drains() {
    let u = build(
        "name = \"u\"\n[[set]]\nname = \"blue\"\ntargets = [\"http://a:1\"]\n\
         [[set]]\nname = \"green\"\ntargets = [\"http://b:1/\"]\nweight = 0",
    )
    .unwrap();
    let to = |pairs: &[(&str, u32)]| -> std::collections::BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let cases = [
        (
            "unknown set",
            to(&[("red", 1)]),
            Err(ChangeError::UnknownSet("red".into())),
        ),
        ("all zero", to(&[("blue", 0)]), Err(ChangeError::AllZero)),
        ("to green", to(&[("green", 100)]), Ok((0, 100))),
        ("split", to(&[("green", 10), ("blue", 90)]), Ok((90, 10))),
    ];
    for (name, weights, want) in cases {
        let got = u.shift(&weights).map(|()| {
            let st = u.status();
            (st.sets[0].weight, st.sets[1].weight)
        });
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(
        u.drain("http://c:1", true),
        Err(ChangeError::UnknownTarget("http://c:1".into()))
    );
    assert_eq!(
        u.drain("http://b:1/", true),
        Ok(()),
        "trailing slash ignored"
    );
    assert!(u.status().targets[1].drained);
}
