//! OpenAPI documents at load time: what `gatehouse check` refuses (with the
//! document's file and JSON pointer) and what `gatehouse openapi routes`
//! prints.

use std::path::Path;

use crate::support::*;

/// Writes `doc` as `policies/openapi/doc.yaml` with a policy naming it, and
/// returns what `gatehouse check` says.
fn check_doc(doc: &str, table_extra: &str) -> Result<(), String> {
    let builder = GatewayBuilder::new().policy(
        "p.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"http://127.0.0.1:9\"]\n\n\
             [[openapi]]\nname = \"doc\"\ndocument = \"openapi/doc.yaml\"\nupstream = \"b\"\n{table_extra}"
        ),
    );
    let config = builder.write();
    std::fs::create_dir_all(builder.path().join("policies/openapi")).unwrap();
    std::fs::write(builder.path().join("policies/openapi/doc.yaml"), doc).unwrap();
    gatehouse::server::check(&config, &gatehouse::config::Environment::default())
        .map(|_| ())
        .map_err(|p| p.to_string())
}

#[test]
fn refused_documents_are_config_errors_with_file_and_pointer() {
    let ok_op = "responses: {'200': {description: ok}}";
    let cases: [(&str, String, &str, Option<&str>); 9] = [
        (
            "plain document",
            format!("openapi: 3.0.3\npaths:\n  /a:\n    get: {{operationId: a, {ok_op}}}\n"),
            "",
            None,
        ),
        (
            "remote ref",
            format!(
                "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      {ok_op}\n      parameters:\n        - $ref: 'https://evil.test/p.yaml'\n"
            ),
            "",
            Some(
                "doc.yaml:0:0: #/paths/~1a/get/parameters/0: $ref `https://evil.test/p.yaml` refused",
            ),
        ),
        (
            "http basic cannot be mapped",
            format!(
                "openapi: 3.0.3\ncomponents:\n  securitySchemes:\n    basic: {{type: http, scheme: basic}}\npaths:\n  /a:\n    get: {{security: [{{basic: []}}], {ok_op}}}\n"
            ),
            "",
            Some(
                "#/components/securitySchemes/basic: security scheme type `http` cannot be mapped",
            ),
        ),
        (
            "api key in a query",
            format!(
                "openapi: 3.0.3\ncomponents:\n  securitySchemes:\n    k: {{type: apiKey, in: query, name: key}}\npaths:\n  /a:\n    get: {{security: [{{k: []}}], {ok_op}}}\n"
            ),
            "allow_unsupported = true\n",
            Some("API keys in query cannot be mapped"),
        ),
        (
            "two schemes at once",
            format!(
                "openapi: 3.0.3\ncomponents:\n  securitySchemes:\n    k: {{type: apiKey, in: header, name: x-key}}\n    o: {{type: oauth2, flows: {{}}}}\npaths:\n  /a:\n    get: {{security: [{{k: [], o: []}}], {ok_op}}}\n"
            ),
            "",
            Some("#/paths/~1a/get/security/0: a requirement naming several schemes"),
        ),
        (
            "xml body is unsupported by default",
            format!(
                "openapi: 3.0.3\npaths:\n  /a:\n    post:\n      {ok_op}\n      requestBody:\n        content:\n          application/xml: {{schema: {{type: object}}}}\n"
            ),
            "",
            Some(
                "#/paths/~1a/post/requestBody/content/application~1xml: unsupported: `application/xml` bodies cannot be validated",
            ),
        ),
        (
            "xml body allowed as a warning",
            format!(
                "openapi: 3.0.3\npaths:\n  /a:\n    post:\n      {ok_op}\n      requestBody:\n        content:\n          application/xml: {{schema: {{type: object}}}}\n"
            ),
            "allow_unsupported = true\n",
            None,
        ),
        (
            "path parameter missing from the template",
            format!(
                "openapi: 3.0.3\npaths:\n  /a/{{id}}:\n    get:\n      {ok_op}\n      parameters: [{{name: ID, in: path, required: true, schema: {{type: string}}}}]\n"
            ),
            "",
            Some(
                "#/paths/~1a~1{id}/get/parameters/0: path parameter `ID` is not in the path template",
            ),
        ),
        (
            "override of an unknown operation",
            format!("openapi: 3.0.3\npaths:\n  /a:\n    get: {{operationId: a, {ok_op}}}\n"),
            "[openapi.operations]\nb = { auth = \"none\" }\n",
            Some("p.toml:10:5: openapi `doc`: no operation has operationId `b`"),
        ),
    ];
    for (name, doc, extra, want) in cases {
        match (check_doc(&doc, extra), want) {
            (Ok(()), None) => {}
            (Err(text), Some(want)) => assert!(text.contains(want), "{name}: {text}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn openapi_routes_lists_every_operation_and_what_it_cannot_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/openapi");
    let (lines, findings) =
        gatehouse::openapi::describe(&dir.join("petstore.yaml"), Some("/api/v3")).unwrap();
    assert_eq!(lines.len(), 19, "{lines:#?}");
    let cases = [
        (
            "GET",
            "/api/v3/pet/{petId}",
            "auth=api_key|jwt (key header api_key) scopes=read:pets,write:pets",
        ),
        (
            "POST",
            "/api/v3/pet",
            "body=application/json(schema) required",
        ),
        (
            "DELETE",
            "/api/v3/pet/{petId}",
            "params=[header:api_key path:petId*]",
        ),
        ("POST", "/api/v3/store/order", "auth=none"),
        ("GET", "/api/v3/pet/findByStatus", "params=[query:status]"),
    ];
    for (method, path, want) in cases {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{method:<7} {path:<36} ")))
            .unwrap_or_else(|| panic!("{method} {path}: {lines:#?}"));
        assert!(line.contains(want), "{method} {path}: {line}");
    }
    assert!(
        findings
            .iter()
            .any(|f| !f.fatal
                && f.pointer == "/paths/~1pet/post/requestBody/content/application~1xml"),
        "{findings:?}"
    );
    let refused = gatehouse::openapi::describe(&dir.join("missing.yaml"), None);
    assert!(refused.is_err(), "a missing file is refused");
}

#[tokio::test]
async fn check_prints_allowed_unsupported_constructs_with_file_and_pointer() {
    let builder = GatewayBuilder::new().policy(
        "p.toml",
        "[[upstream]]\nname = \"b\"\ntargets = [\"http://127.0.0.1:9\"]\n\n\
         [[openapi]]\nname = \"doc\"\ndocument = \"openapi/doc.yaml\"\nupstream = \"b\"\nallow_unsupported = true\n",
    );
    let config = builder.write();
    std::fs::create_dir_all(builder.path().join("policies/openapi")).unwrap();
    std::fs::write(
        builder.path().join("policies/openapi/doc.yaml"),
        "openapi: 3.0.3\npaths:\n  /a:\n    post:\n      responses: {'200': {description: ok}}\n      requestBody:\n        content:\n          application/xml: {schema: {type: object}}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("ok (1 routes"), "{stdout}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains("doc.yaml"),
        "the document's file: {warning}"
    );
    assert!(
        warning.contains("#/paths/~1a/post/requestBody/content/application~1xml"),
        "the JSON pointer: {warning}"
    );
}
