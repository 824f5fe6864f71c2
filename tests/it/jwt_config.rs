//! JWT issuer config errors that `Issuer::build` finds come back as config
//! problems with the file and the line of the issuer's table.

use crate::support::*;

#[test]
fn bad_issuer_settings_are_reported_with_file_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "identity header target",
            "claim_headers = { sub = \"x-consumer-id\" }",
            "claim_headers.sub: \"x-consumer-id\" is an identity header",
        ),
        (
            "credential id target",
            "claim_headers = { sub = \"X-Credential-Id\" }",
            "claim_headers.sub: \"X-Credential-Id\" is an identity header",
        ),
        (
            "forwarding header target",
            "claim_headers = { tenant = \"x-forwarded-prefix\" }",
            "claim_headers.tenant: \"x-forwarded-prefix\" is a client-address or forwarding header",
        ),
        (
            "real ip target",
            "claim_headers = { sub = \"x-real-ip\" }",
            "claim_headers.sub: \"x-real-ip\" is a client-address or forwarding header",
        ),
        (
            "min refresh below the floor",
            "jwks_min_refresh_interval = \"100ms\"",
            "jwks_min_refresh_interval: must be at least 1s",
        ),
    ];
    for (name, line, want) in cases {
        let b = GatewayBuilder::new().main(&format!(
            "[[jwt_issuer]]\nname = \"idp\"\nalgorithms = [\"ES256\"]\n\
             jwks_url = \"https://idp.test/jwks\"\n{line}\n"
        ));
        let config = b.write();
        let err = gatehouse::server::check(&config, &Default::default())
            .expect_err("the issuer must be refused");
        let p = err
            .0
            .iter()
            .find(|p| p.message.contains(want))
            .unwrap_or_else(|| panic!("case {name}: no problem containing {want:?} in:\n{err}"));
        assert!(
            p.message.contains("\"idp\""),
            "case {name}: names the issuer: {err}"
        );
        assert_eq!(p.file, config, "case {name}");
        let text = std::fs::read_to_string(&config).unwrap();
        let table = text.lines().position(|l| l == "[[jwt_issuer]]").unwrap() + 1;
        assert_eq!(p.line, table, "case {name}: the issuer's table line: {err}");
    }
}
