//! `GET /api/openapi.json`: the document lists exactly the router's routes,
//! and its request schemas come from the handlers' request types.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use remediate_functions::openapi::{ROUTES, document, openapi_path};
use serde_json::Value;

use crate::util::*;

/// (method, path) of every `.route(...)` call in the router's source, read
/// from `routes/mod.rs`: a route added there and not to the registry fails
/// the tests below.
fn router_source_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../../src/routes/mod.rs");
    let body = src
        .split("pub fn router()")
        .nth(1)
        .expect("routes/mod.rs has `pub fn router()`");
    assert!(
        !body.contains(".nest(") && !body.contains(".merge("),
        "the router nests or merges another router: teach this test to read it"
    );
    let mut out = BTreeSet::new();
    for call in body.split(".route(").skip(1) {
        // The call's text up to its closing parenthesis.
        let mut depth = 1;
        let mut end = call.len();
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &call[..end];
        let path = call.split('"').nth(1).expect("a route path literal");
        let handlers = &call[call.find(',').expect("route(path, handlers)")..];
        let mut found = false;
        for m in ["get", "post", "put", "delete", "patch", "head", "options"] {
            let plain = format!("{m}(");
            let chained = format!(".{m}(");
            let standalone = handlers
                .trim_start_matches([',', ' ', '\n'])
                .starts_with(&plain);
            if standalone || handlers.contains(&chained) {
                out.insert((m.to_string(), path.to_string()));
                found = true;
            }
        }
        assert!(found, "no method found in route {path}: {handlers}");
    }
    assert!(out.len() >= 10, "parsed too few routes: {out:?}");
    out
}

fn registry() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect()
}

#[test]
fn the_registry_lists_exactly_the_routes_of_the_router() {
    let router = router_source_routes();
    let reg = registry();
    let missing: Vec<_> = router.difference(&reg).collect();
    let extra: Vec<_> = reg.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes served but not in openapi::ROUTES: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi::ROUTES lists routes the router does not serve: {extra:?}"
    );
    assert_eq!(reg.len(), ROUTES.len(), "a route is listed twice");
}

fn concrete(path: &str) -> String {
    path.replace("{host_id}", "probe-host")
}

/// The router's own 404 and 405 have an empty body; a handler's errors are
/// JSON with a `code`.
fn is_router_miss(status: StatusCode, body: &Value) -> bool {
    (status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED)
        && body.get("code").is_none()
}

#[tokio::test]
async fn every_documented_route_is_served_and_other_methods_are_not() {
    let api = Api::new();
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let reg = registry();
    for path in reg.iter().map(|(_, p)| p).collect::<BTreeSet<_>>() {
        for m in &methods {
            let req = Request::builder()
                .method(m.clone())
                .uri(concrete(path))
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, body) = api.send(req).await;
            let documented = reg.contains(&(m.as_str().to_lowercase(), path.clone()));
            if documented {
                assert!(
                    !is_router_miss(status, &body),
                    "{m} {path} is documented but not served: {status}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is served but not documented"
                );
            }
        }
    }
    // And an unknown path is the router's 404.
    let (s, b) = api.get("/api/not-a-route", ADMIN).await;
    assert!(is_router_miss(s, &b) && s == StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_document_is_served_to_viewers_and_describes_the_routes() {
    let api = Api::new();
    let (s, _) = api
        .send(
            Request::get("/api/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, doc) = api.get("/api/openapi.json", VIEWER).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc, document());
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, ROUTES.len());
    for r in ROUTES {
        let op = &doc["paths"][openapi_path(r.path)][r.method];
        assert!(op.is_object(), "{} {}", r.method, r.path);
        assert!(
            op["responses"].as_object().unwrap().contains_key("200"),
            "{} {}",
            r.method,
            r.path
        );
    }
    assert!(paths.contains_key("/api/hosts/{hostId}/signals"));
    let signals = &doc["paths"]["/api/hosts/{hostId}/signals"]["post"];
    assert_eq!(signals["parameters"][0]["name"], "hostId");
    assert_eq!(signals["requestBody"]["required"], true);

    // Request schemas from the request types, with their rules.
    let schemas = &doc["components"]["schemas"];
    let report = &schemas["SignalReport"];
    assert_eq!(report["required"], serde_json::json!(["signals"]));
    assert_eq!(report["properties"]["signals"]["maxItems"], 50);
    assert_eq!(report["additionalProperties"], false);
    assert_eq!(schemas["Signal"]["properties"]["code"]["maxLength"], 64);
    let modes = &schemas["Remediate"]["properties"]["mode"]["enum"];
    assert_eq!(
        modes,
        &serde_json::json!(["plan", "dry-run", "execute", "drain-queue"])
    );
    assert!(schemas["Remediate"]["properties"]["hostId"].is_object());
    assert_eq!(
        schemas["Decide"]["required"],
        serde_json::json!(["runId", "mode"])
    );
    // The host document's knobs come from the knob table.
    let put = &doc["paths"]["/api/hosts/{hostId}"]["put"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let knob = &put["properties"]["remediationPolicyOverrides"]["properties"]["maxRetryAttempts"];
    assert_eq!(
        (knob["minimum"].as_i64(), knob["maximum"].as_i64()),
        (Some(1), Some(20))
    );
    assert!(
        put["properties"]["remediationGuardOverrides"]["properties"]["blocklistRegex"].is_object()
    );
    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.get(name).is_some(), "dangling $ref {target}");
    }
}
