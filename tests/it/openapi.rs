//! OpenAPI-first routes: the Swagger Petstore 3.0 document and a 3.1
//! example as routes, with parameter, body and security checks before the
//! backend, refused documents as config errors, atomic reloads of a changed
//! document, and dry-run response validation.

use std::path::Path;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::support::*;

const HS_ISS: &str = "https://idp.test";
const AUD: &str = "petstore";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/openapi")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copies fixtures into the gateway's `policies/openapi/` directory.
fn install(builder: &GatewayBuilder, files: &[&str]) {
    let dir = builder.path().join("policies/openapi");
    std::fs::create_dir_all(&dir).unwrap();
    for f in files {
        std::fs::write(dir.join(f), fixture(f)).unwrap();
    }
}

fn hs_secret() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

fn hs_issuer() -> String {
    format!(
        "[[jwt_issuer]]\nname = \"idp\"\nissuer = \"{HS_ISS}\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"HS256\"]\nhmac_secret_env = \"OAS_HS_SECRET\"\n"
    )
}

fn token(secret: &str, scope: &str) -> String {
    let now = unix_now();
    let claims = json!({"sub": "alice", "iss": HS_ISS, "aud": AUD, "iat": now, "exp": now + 600, "scope": scope});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// One request and what must come back.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    status: u16,
    code: Option<&'static str>,
    /// A pointer one of the `errors` must carry.
    pointer: Option<&'static str>,
}

const fn ok(name: &'static str, method: &'static str, path: &'static str) -> Case {
    Case {
        name,
        method,
        path,
        headers: &[],
        body: None,
        status: 200,
        code: None,
        pointer: None,
    }
}

async fn run(gw: &TestGateway, cases: &[Case], hits: &std::sync::atomic::AtomicUsize) {
    let c = client();
    for case in cases {
        let before = hits.load(Ordering::SeqCst);
        let mut req = c.request(case.method.parse().unwrap(), gw.url(case.path));
        for (k, v) in case.headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = case.body {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let name = case.name;
        let text = resp.text().await.unwrap();
        assert_eq!(status, case.status, "{name}: {text}");
        let reached = hits.load(Ordering::SeqCst) - before;
        assert_eq!(reached, usize::from(status < 300), "{name}: backend hits");
        if let Some(code) = case.code {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"], code, "{name}: {v}");
            if let Some(pointer) = case.pointer {
                let pointers: Vec<&str> = v["errors"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["pointer"].as_str()).collect())
                    .unwrap_or_default();
                assert!(pointers.contains(&pointer), "{name}: {v}");
            }
        }
    }
}

fn petstore_policy(backend: &Backend, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"pets\"\ntargets = [\"{}\"]\n\n\
         [[openapi]]\nname = \"petstore\"\ndocument = \"openapi/petstore.yaml\"\nupstream = \"pets\"\n\
         path_prefix = \"/api/v3\"\nallow_unsupported = true\nunderscores_in_headers = \"allow\"\n{extra}",
        backend.url()
    )
}

#[tokio::test]
async fn petstore_parameters_and_bodies_are_checked_before_the_backend() {
    let (backend, hits) = Backend::counting().await;
    // The pet operations are secured in the document; these overrides
    // make the ones under test public, by operationId.
    let overrides = "[openapi.operations]\n\
        getPetById = { auth = \"none\" }\nfindPetsByStatus = { auth = \"none\" }\n\
        findPetsByTags = { auth = \"none\" }\naddPet = { auth = \"none\" }\n\
        uploadFile = { auth = \"none\" }\ndeletePet = { skip = true }\n";
    let builder = GatewayBuilder::new()
        .env("OAS_HS_SECRET", &hs_secret())
        .main(&hs_issuer())
        .policy("pets.toml", &petstore_policy(&backend, overrides));
    install(&builder, &["petstore.yaml"]);
    let gw = builder.start().await;
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let cases = [
        ok("order by id", "GET", "/api/v3/store/order/5"),
        ok("HEAD follows GET", "HEAD", "/api/v3/store/order/5"),
        Case {
            name: "order id not an integer",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1store~1order~1{orderId}/get/parameters/0"),
            ..ok("", "GET", "/api/v3/store/order/abc")
        },
        Case {
            name: "delete order id not an integer",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1store~1order~1{orderId}/delete/parameters/0"),
            ..ok("", "DELETE", "/api/v3/store/order/1.5")
        },
        Case {
            name: "valid order",
            headers: json_ct,
            body: Some(
                r#"{"id": 1, "petId": 2, "quantity": 1, "status": "placed", "complete": false}"#,
            ),
            ..ok("", "POST", "/api/v3/store/order")
        },
        Case {
            name: "order status not in the enum",
            headers: json_ct,
            body: Some(r#"{"status": "lost"}"#),
            status: 422,
            code: Some("schema_violation"),
            pointer: Some("/status"),
            ..ok("", "POST", "/api/v3/store/order")
        },
        Case {
            name: "order with a repeated key",
            headers: json_ct,
            body: Some(r#"{"quantity": 1, "quantity": 2}"#),
            status: 422,
            code: Some("schema_violation"),
            pointer: Some("/quantity"),
            ..ok("", "POST", "/api/v3/store/order")
        },
        Case {
            name: "xml order cannot be validated, refused",
            headers: &[("content-type", "application/xml")],
            body: Some("<order/>"),
            status: 415,
            code: Some("unsupported_media_type"),
            ..ok("", "POST", "/api/v3/store/order")
        },
        Case {
            name: "body on an operation without requestBody",
            headers: json_ct,
            body: Some("{}"),
            status: 415,
            code: Some("unsupported_media_type"),
            ..ok("", "GET", "/api/v3/user/logout")
        },
        ok(
            "status in the enum",
            "GET",
            "/api/v3/pet/findByStatus?status=sold",
        ),
        ok("optional status absent", "GET", "/api/v3/pet/findByStatus"),
        Case {
            name: "status not in the enum",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1pet~1findByStatus/get/parameters/0"),
            ..ok("", "GET", "/api/v3/pet/findByStatus?status=lost")
        },
        Case {
            name: "scalar status twice",
            status: 400,
            code: Some("invalid_parameter"),
            ..ok(
                "",
                "GET",
                "/api/v3/pet/findByStatus?status=sold&status=pending",
            )
        },
        ok(
            "exploded tags",
            "GET",
            "/api/v3/pet/findByTags?tags=a&tags=b%20c",
        ),
        ok("pet by id", "GET", "/api/v3/pet/7"),
        Case {
            name: "pet id not an integer",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1pet~1{petId}/get/parameters/0"),
            ..ok("", "GET", "/api/v3/pet/seven")
        },
        Case {
            name: "valid pet",
            headers: json_ct,
            body: Some(
                r#"{"name": "doggie", "photoUrls": ["u"], "category": {"id": 1, "name": "Dogs"}, "status": "available"}"#,
            ),
            ..ok("", "POST", "/api/v3/pet")
        },
        Case {
            name: "pet without required photoUrls",
            headers: json_ct,
            body: Some(r#"{"name": "doggie"}"#),
            status: 422,
            code: Some("schema_violation"),
            pointer: Some(""),
            ..ok("", "POST", "/api/v3/pet")
        },
        Case {
            name: "pet with a wrong nested type",
            headers: json_ct,
            body: Some(r#"{"name": "d", "photoUrls": [], "tags": [{"id": "x"}]}"#),
            status: 422,
            code: Some("schema_violation"),
            pointer: Some("/tags/0/id"),
            ..ok("", "POST", "/api/v3/pet")
        },
        Case {
            name: "required body missing",
            headers: json_ct,
            status: 422,
            code: Some("schema_violation"),
            ..ok("", "POST", "/api/v3/pet")
        },
        Case {
            name: "not json",
            headers: json_ct,
            body: Some("{"),
            status: 400,
            code: Some("invalid_json"),
            ..ok("", "POST", "/api/v3/pet")
        },
        Case {
            name: "binary upload",
            headers: &[("content-type", "application/octet-stream")],
            body: Some("\u{1}\u{2}binary"),
            ..ok("", "POST", "/api/v3/pet/7/uploadImage?additionalMetadata=x")
        },
        Case {
            name: "upload with another media type",
            headers: &[("content-type", "image/png")],
            body: Some("png"),
            status: 415,
            code: Some("unsupported_media_type"),
            ..ok("", "POST", "/api/v3/pet/7/uploadImage")
        },
        ok(
            "login query",
            "GET",
            "/api/v3/user/login?username=a&password=b",
        ),
        Case {
            name: "unknown path",
            status: 404,
            code: Some("route_not_found"),
            ..ok("", "GET", "/api/v3/pets")
        },
        Case {
            name: "path without the prefix",
            status: 404,
            code: Some("route_not_found"),
            ..ok("", "GET", "/store/order/5")
        },
        Case {
            name: "undeclared method",
            status: 405,
            code: Some("method_not_allowed"),
            ..ok("", "PATCH", "/api/v3/pet")
        },
        Case {
            name: "skipped operation",
            status: 405,
            code: Some("method_not_allowed"),
            ..ok("", "DELETE", "/api/v3/pet/7")
        },
    ];
    run(&gw, &cases, &hits).await;
}

#[tokio::test]
async fn petstore_security_maps_to_jwt_scopes_and_api_keys() {
    let (backend, hits) = Backend::counting().await;
    let secret = hs_secret();
    let builder = GatewayBuilder::new()
        .env("OAS_HS_SECRET", &secret)
        .main(&hs_issuer())
        .policy(
            "pets.toml",
            &petstore_policy(&backend, "jwt_issuers = [\"idp\"]\n"),
        );
    install(&builder, &["petstore.yaml"]);
    let gw = builder.start().await;
    let c = client();
    let full = format!("Bearer {}", token(&secret, "write:pets read:pets"));
    let read_only = format!("Bearer {}", token(&secret, "read:pets"));
    let cases: [(&str, &str, &str, Option<&str>, u16, Option<&str>); 7] = [
        (
            "oauth2 operation without a token",
            "PUT",
            "/api/v3/pet",
            None,
            401,
            Some("missing_credentials"),
        ),
        (
            "oauth2 operation, missing scope",
            "GET",
            "/api/v3/pet/findByTags",
            Some(&read_only),
            403,
            Some("insufficient_scope"),
        ),
        (
            "oauth2 operation, all scopes",
            "GET",
            "/api/v3/pet/findByTags?tags=a",
            Some(&full),
            200,
            None,
        ),
        (
            "api key or oauth2, token",
            "GET",
            "/api/v3/pet/1",
            Some(&full),
            200,
            None,
        ),
        (
            "api key or oauth2, nothing",
            "GET",
            "/api/v3/pet/1",
            None,
            401,
            Some("missing_credentials"),
        ),
        (
            "api key operation without a key",
            "GET",
            "/api/v3/store/inventory",
            None,
            401,
            Some("missing_credentials"),
        ),
        (
            "no security in the document",
            "GET",
            "/api/v3/store/order/1",
            None,
            200,
            None,
        ),
    ];
    for (name, method, path, auth, status, code) in cases {
        let before = hits.load(Ordering::SeqCst);
        let mut req = c.request(method.parse().unwrap(), gw.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        if path.ends_with("inventory") {
            let challenge: Vec<&str> = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            assert!(
                challenge.iter().any(|c| c.contains("header=\"api_key\"")),
                "{name}: {challenge:?}"
            );
        }
        if let Some(code) = code {
            assert_eq!(error_code(resp).await, code, "{name}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst) - before,
            usize::from(status == 200),
            "{name}: backend hits"
        );
    }
}

#[tokio::test]
async fn openapi_31_json_document_with_a_sibling_ref() {
    let (backend, hits) = Backend::counting().await;
    let secret = hs_secret();
    let policy = format!(
        "[[upstream]]\nname = \"orders\"\ntargets = [\"{}\"]\n\n\
         [[openapi]]\nname = \"orders\"\ndocument = \"openapi/orders-3.1.json\"\nupstream = \"orders\"\n",
        backend.url()
    );
    let builder = GatewayBuilder::new()
        .env("OAS_HS_SECRET", &secret)
        .main(&hs_issuer())
        .policy("orders.toml", &policy);
    install(&builder, &["orders-3.1.json", "order-schemas.json"]);
    let gw = builder.start().await;
    let tenant_json: &[(&str, &str)] =
        &[("content-type", "application/json"), ("x-tenant", "acme")];
    let cases = [
        ok("list", "GET", "/orders?limit=5&state=open&ids=1,2"),
        Case {
            name: "limit above maximum",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1orders/get/parameters/0"),
            ..ok("", "GET", "/orders?limit=101")
        },
        Case {
            name: "state outside the 3.1 type list",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1orders/get/parameters/1"),
            ..ok("", "GET", "/orders?state=lost")
        },
        Case {
            name: "comma list too long",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1orders/get/parameters/2"),
            ..ok("", "GET", "/orders?ids=1,2,3,4")
        },
        Case {
            name: "create",
            headers: tenant_json,
            body: Some(r#"{"sku": "ABC-1", "qty": 2, "note": null}"#),
            ..ok("", "POST", "/orders")
        },
        Case {
            name: "missing tenant header",
            headers: &[("content-type", "application/json")],
            body: Some(r#"{"sku": "ABC-1", "qty": 2}"#),
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1orders/post/parameters/0"),
            ..ok("", "POST", "/orders")
        },
        Case {
            name: "tenant header breaks its pattern",
            headers: &[("content-type", "application/json"), ("x-tenant", "ACME")],
            body: Some(r#"{"sku": "ABC-1", "qty": 2}"#),
            status: 400,
            code: Some("invalid_parameter"),
            ..ok("", "POST", "/orders")
        },
        Case {
            name: "exclusiveMinimum from the sibling file",
            headers: tenant_json,
            body: Some(r#"{"sku": "ABC-1", "qty": 0}"#),
            status: 422,
            code: Some("schema_violation"),
            pointer: Some("/qty"),
            ..ok("", "POST", "/orders")
        },
        Case {
            name: "extra property",
            headers: tenant_json,
            body: Some(r#"{"sku": "ABC-1", "qty": 1, "admin": true}"#),
            status: 422,
            code: Some("schema_violation"),
            ..ok("", "POST", "/orders")
        },
        ok("order by path-level parameter", "GET", "/orders/0a1b2c3d"),
        Case {
            name: "path-level parameter pattern",
            status: 400,
            code: Some("invalid_parameter"),
            pointer: Some("/paths/~1orders~1{id}/parameters/0"),
            ..ok("", "GET", "/orders/xyz")
        },
        Case {
            name: "bearer operation without a token",
            status: 401,
            code: Some("missing_credentials"),
            ..ok("", "DELETE", "/orders/0a1b2c3d")
        },
    ];
    run(&gw, &cases, &hits).await;
    let c = client();
    let r = c
        .delete(gw.url("/orders/0a1b2c3d"))
        .bearer_auth(token(&secret, "orders:write"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "bearer with the operation's scope");
}

#[tokio::test]
async fn a_changed_document_is_swapped_atomically_on_reload() {
    let (backend, hits) = Backend::counting().await;
    let v1 = "openapi: 3.0.3\npaths:\n  /items/{id}:\n    get:\n      operationId: getItem\n      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]\n      responses: {'200': {description: ok}}\n";
    let v2 = "openapi: 3.0.3\npaths:\n  /items/{id}:\n    get:\n      operationId: getItem\n      parameters: [{name: id, in: path, required: true, schema: {type: string, pattern: '^[a-z]+$'}}]\n      responses: {'200': {description: ok}}\n  /things:\n    get: {operationId: things, responses: {'200': {description: ok}}}\n";
    let broken = "openapi: 3.0.3\npaths:\n  /items:\n    get:\n      responses: {'200': {$ref: 'http://evil.test/r.yaml'}}\n";
    let builder = GatewayBuilder::new().policy(
        "items.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
             [[openapi]]\nname = \"items\"\ndocument = \"openapi/items.yaml\"\nupstream = \"b\"\n",
            backend.url()
        ),
    );
    let doc = builder.path().join("policies/openapi/items.yaml");
    std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
    std::fs::write(&doc, v1).unwrap();
    let gw = builder.start().await;
    let c = client();
    let status = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/items/1").await, 200);
    assert_eq!(status("/items/abc").await, 400);
    assert_eq!(status("/things").await, 404);

    std::fs::write(&doc, v2).unwrap();
    gw.running().reload().await.unwrap();
    assert_eq!(status("/items/abc").await, 200, "the new schema");
    assert_eq!(status("/items/1").await, 400, "the old schema is gone");
    assert_eq!(status("/things").await, 200, "the new operation");

    std::fs::write(&doc, broken).unwrap();
    let err = gw
        .running()
        .reload()
        .await
        .expect_err("a refused ref fails the reload");
    let text = err.to_string();
    assert!(
        text.contains("items.yaml") && text.contains("#/paths/~1items/get/responses/200"),
        "{text}"
    );
    assert_eq!(
        status("/items/abc").await,
        200,
        "the last good document stays"
    );
    assert_eq!(status("/things").await, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn response_validation_logs_and_counts_without_blocking() {
    let backend = Backend::start(|req| async move {
        let (status, ct) = match req.uri().path() {
            "/good" | "/typed" => (200, "application/json"),
            "/html" => (200, "text/html"),
            _ => (500, "application/json"),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", ct)
            .body(full("{}"))
            .unwrap()
    })
    .await;
    let doc = "openapi: 3.1.0\npaths:\n  /good:\n    get: {operationId: good, responses: {'200': {description: ok, content: {application/json: {schema: {type: object}}}}}}\n  /typed:\n    get: {operationId: typed, responses: {'200': {description: ok, content: {application/json: {schema: {type: object, required: [id]}}}}}}\n  /html:\n    get: {operationId: html, responses: {'200': {description: ok, content: {application/json: {}}}}}\n  /fails:\n    get: {operationId: fails, responses: {'200': {description: ok}}}\n";
    let builder = GatewayBuilder::new().policy(
        "r.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
             [[openapi]]\nname = \"api\"\ndocument = \"openapi/api.yaml\"\nupstream = \"b\"\nvalidate_responses = true\n",
            backend.url()
        ),
    );
    std::fs::create_dir_all(builder.path().join("policies/openapi")).unwrap();
    std::fs::write(builder.path().join("policies/openapi/api.yaml"), doc).unwrap();
    let gw = builder.start().await;
    let c = client();
    for (path, want) in [
        ("/good", 200),
        ("/typed", 200),
        ("/html", 200),
        ("/fails", 500),
        ("/fails", 500),
    ] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}: passed on unchanged");
        let body = r.bytes().await.unwrap();
        assert_eq!(&body[..], b"{}", "{path}: body passed on");
    }
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |route: &str, reason: &str| {
        let key = format!(
            "gatehouse_openapi_response_mismatches_total{{route=\"{route}\",reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(
        count("api.fails", "undeclared_status"),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        count("api.html", "undeclared_media_type"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(count("api.good", "undeclared_status"), Some(0), "{metrics}");
    assert_eq!(count("api.good", "body_schema"), Some(0), "{metrics}");
    assert_eq!(
        count("api.typed", "body_schema"),
        Some(1),
        "body without `id`: {metrics}"
    );
}

#[tokio::test]
async fn the_watcher_reloads_a_changed_document() {
    let backend = Backend::echo().await;
    let builder = GatewayBuilder::new().policy(
        "w.toml",
        &format!(
            "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
             [[openapi]]\nname = \"w\"\ndocument = \"docs/w.yaml\"\nupstream = \"b\"\n",
            backend.url()
        ),
    );
    // In a directory of its own: only the watch on the document sees it.
    let doc = builder.path().join("policies/docs/w.yaml");
    std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
    let op = |path: &str| {
        format!(
            "openapi: 3.1.0\npaths:\n  {path}:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n"
        )
    };
    std::fs::write(&doc, op("/before")).unwrap();
    let gw = builder.start_watching().await;
    let c = client();
    assert_eq!(c.get(gw.url("/before")).send().await.unwrap().status(), 200);
    std::fs::write(&doc, op("/after")).unwrap();
    let served = eventually(10, || async {
        let s = c.get(gw.url("/after")).send().await.ok()?.status();
        (s == 200).then_some(())
    })
    .await;
    assert!(served.is_some(), "the new document's operation is served");
    assert_eq!(c.get(gw.url("/before")).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn petstore_api_keys_are_read_from_the_documents_header() {
    let (backend, hits) = Backend::counting().await;
    let (token, hash) = admin_token();
    let builder = GatewayBuilder::new()
        .admin_token_hash(&hash)
        .main(&fast_api_keys(""))
        .env("OAS_HS_SECRET", &hs_secret())
        .main(&hs_issuer())
        .policy("pets.toml", &petstore_policy(&backend, ""));
    install(&builder, &["petstore.yaml"]);
    let gw = builder.start().await;
    let admin = AdminApi::new(&gw, &token);
    let consumer = admin.create_consumer("shop").await;
    let (_, key) = admin
        .create_key(&consumer, json!({"scopes": ["read:pets", "write:pets"]}))
        .await;
    let (_, unscoped) = admin.create_key(&consumer, json!({})).await;
    let c = client();
    let cases = [
        (
            "key in the api_key header",
            "/api/v3/store/inventory",
            Some(("api_key", key.as_str())),
            200,
        ),
        (
            "key in another header",
            "/api/v3/store/inventory",
            Some(("x-api-key", key.as_str())),
            401,
        ),
        (
            "wrong key",
            "/api/v3/store/inventory",
            Some(("api_key", "gh_nope")),
            401,
        ),
        // getPetById: api_key or oauth2, with the oauth2 scopes asked of both.
        (
            "scoped key on the mixed operation",
            "/api/v3/pet/3",
            Some(("api_key", key.as_str())),
            200,
        ),
        (
            "unscoped key on the mixed operation",
            "/api/v3/pet/3",
            Some(("api_key", unscoped.as_str())),
            403,
        ),
    ];
    for (name, path, header, status) in cases {
        let before = hits.load(Ordering::SeqCst);
        let mut req = c.get(gw.url(path));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        assert_eq!(
            hits.load(Ordering::SeqCst) - before,
            usize::from(status == 200),
            "{name}: backend hits"
        );
        if status == 200 {
            let echo: Echo = resp.json().await.unwrap();
            assert!(
                echo.header("api_key").is_none(),
                "{name}: the key is not forwarded"
            );
        }
    }
}
