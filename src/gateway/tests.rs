//! Tests of the Host step (request ids: `tests_pipeline.rs`).

use http::Version;
use http::header;

use super::*;

fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
    let mut b = Request::builder().version(version).uri(uri);
    for h in hosts {
        b = b.header(header::HOST, *h);
    }
    b.body(()).unwrap_or_default()
}

#[test]
fn hosts() {
    let cases: &[(&str, Version, &str, &[&str], Result<&str, ()>)] = &[
        (
            "plain",
            Version::HTTP_11,
            "/",
            &["API.test:8443"],
            Ok("api.test"),
        ),
        (
            "trailing dot",
            Version::HTTP_11,
            "/",
            &["api.test."],
            Ok("api.test"),
        ),
        ("missing on 1.1", Version::HTTP_11, "/", &[], Err(())),
        ("missing on 1.0", Version::HTTP_10, "/", &[], Ok("")),
        ("duplicate", Version::HTTP_11, "/", &["a", "a"], Err(())),
        (
            "absolute form agrees",
            Version::HTTP_11,
            "http://a.test/x",
            &["a.test"],
            Ok("a.test"),
        ),
        (
            "absolute form differs",
            Version::HTTP_11,
            "http://evil.test/x",
            &["a.test"],
            Err(()),
        ),
        (
            "h2 authority",
            Version::HTTP_2,
            "https://b.test/x",
            &[],
            Ok("b.test"),
        ),
        ("userinfo", Version::HTTP_11, "/", &["u@a.test"], Err(())),
        (
            "port out of range",
            Version::HTTP_11,
            "/",
            &["a.test:65536"],
            Err(()),
        ),
        ("empty port", Version::HTTP_11, "/", &["a.test:"], Err(())),
        ("junk", Version::HTTP_11, "/", &["a.test;x"], Err(())),
        (
            "h2 authority and Host differ",
            Version::HTTP_2,
            "https://b.test/x",
            &["c.test"],
            Err(()),
        ),
        ("ipv6", Version::HTTP_11, "/", &["[::1]:8080"], Ok("[::1]")),
    ];
    for (name, v, uri, hs, want) in cases {
        let got = host_of(&req(*v, uri, hs)).map(|h| h.name).map_err(|_| ());
        assert_eq!(
            got.as_deref().map_err(|_| ()),
            want.as_ref().map(|s| *s).map_err(|_| ()),
            "{name}"
        );
    }
}
