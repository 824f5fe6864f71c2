//! Tests of the config types: store URLs against the config dir, secrets kept out of `Debug`.

use super::*;

#[test]
fn store_urls_resolve_against_the_config_dir() {
    let base = std::path::Path::new("/etc/gatehouse");
    let cases = [
        (
            "relative file",
            "gatehouse.db",
            "/etc/gatehouse/gatehouse.db",
        ),
        (
            "sqlite scheme",
            "sqlite://data/keys.db",
            "/etc/gatehouse/data/keys.db",
        ),
        ("absolute file", "/var/lib/gh.db", "/var/lib/gh.db"),
        (
            "postgres as is",
            "postgres://gh@db/keys",
            "postgres://gh@db/keys",
        ),
        ("unknown scheme as is", "mysql://x", "mysql://x"),
    ];
    for (name, url, want) in cases {
        let cfg = StoreConfig {
            url: url.to_owned(),
            ..StoreConfig::default()
        };
        assert_eq!(cfg.options(base).url, want, "{name}");
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let env = Environment::new([("HS_SECRET".to_owned(), "s3cr3t-value".to_owned())]);
    assert_eq!(env.get("HS_SECRET").as_deref(), Some("s3cr3t-value"));
    let shown = format!(
        "{env:?} {:?} {:?} {:?}",
        StoreConfig {
            url: "postgres://gh:pa55word@db/keys".into(),
            ..StoreConfig::default()
        },
        RateLimitsConfig {
            redis_url: Some("redis://:pa55word@cache:6379".into()),
            ..RateLimitsConfig::default()
        },
        StoreConfig {
            url: "postgres://gh:pa55word@db/keys".into(),
            ..StoreConfig::default()
        }
        .options(std::path::Path::new("/")),
    );
    assert!(shown.contains("HS_SECRET"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "an environment value leaked");
    assert!(!shown.contains("pa55word"), "a password leaked");
    assert!(shown.contains("postgres://***@db/keys"), "{shown}");
}
