//! Every management API route through `api::router(…).oneshot(…)`, in
//! process and without a network, on SQLite, PostgreSQL and MariaDB: the
//! happy path with an admin token, the same route refused without a token,
//! with a wrong one and with a customer's API key (each in the one error
//! shape, and changing nothing), and `/me` with the customer's own key.
//! `tests/api.rs` drives the same routes over real HTTP through the proxy.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::db::TestDb;
use mcp_meter::api::{ApiState, router};
use mcp_meter::config::Config;
use mcp_meter_auth::Authenticator;
use mcp_meter_billing::Catalog;
use mcp_meter_plugin::ports::SystemClock;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "oneshot-admin-token-0123456789";

const CONFIG: &str = r#"
[upstream]
command = "unused"

[database]
url = "sqlite::memory:"

[api]
admin_tokens = ["oneshot-admin-token-0123456789"]

[[plans]]
id = "prepaid"
model = "credits"
prices = { default = 1 }

[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 10 }
"#;

/// The API over `db`'s store, as the proxy builds it.
async fn app(db: &TestDb) -> axum::Router {
    let config = Config::from_toml_str(CONFIG, "oneshot.toml", &|_| None).expect("config");
    let store = db.open().await;
    let catalog = Catalog::compile(&config.billing, &config.plans).expect("plans");
    let authenticator =
        Authenticator::new(config.auth.clone(), store.clone(), Arc::new(SystemClock))
            .expect("authenticator");
    router(
        ApiState {
            store,
            catalog: Arc::new(catalog),
            admin_tokens: Arc::new(vec![TOKEN.to_owned()]),
            authenticator: Some(Arc::new(authenticator)),
            admin_jwt: None,
        },
        64 * 1024,
    )
}

/// Sends one request to a fresh clone of `app`: the status and the body
/// (JSON, or the text of a non-JSON body as a string).
async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/api/v1{path}"));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if path.ends_with("/credits") {
        request = request.header("idempotency-key", format!("oneshot-{path}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Asserts `body` is the API's error shape with `code`.
fn assert_error(body: &Value, code: &str, what: &str) {
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

async fn every_route_answers_in_process(db: TestDb) {
    let app = app(&db).await;
    let admin = Some(TOKEN);

    // Setup through the API itself: a customer with a key and credits.
    let (status, customer) = send(
        &app,
        Method::POST,
        "/customers",
        admin,
        Some(&json!({"name": "Ada", "plan": "prepaid"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{customer}");
    let id = customer["id"].as_str().expect("customer id").to_owned();
    let (status, created) = send(
        &app,
        Method::POST,
        &format!("/customers/{id}/keys"),
        admin,
        Some(&json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("the key, once").to_owned();
    let key_id = created["id"].as_str().expect("key id").to_owned();

    // Every admin route: (method, path, body, expected status).
    let routes: Vec<(Method, String, Option<Value>, StatusCode)> = vec![
        (Method::GET, "/plans".into(), None, StatusCode::OK),
        (Method::GET, "/plans/prepaid".into(), None, StatusCode::OK),
        (Method::GET, "/customers".into(), None, StatusCode::OK),
        (
            Method::GET,
            format!("/customers/{id}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::PATCH,
            format!("/customers/{id}"),
            Some(json!({"name": "Ada L."})),
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/customers/{id}/keys"),
            None,
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/customers/{id}/credits"),
            Some(json!({"kind": "grant", "amount": 25, "reason": "welcome"})),
            StatusCode::CREATED,
        ),
        (
            Method::GET,
            format!("/customers/{id}/balance"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/customers/{id}/ledger"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/customers/{id}/subscription"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            format!("/customers/{id}/subscription"),
            Some(json!({"plan": "team", "status": "active"})),
            StatusCode::OK,
        ),
        (Method::GET, "/usage".into(), None, StatusCode::OK),
        (Method::GET, "/usage/daily".into(), None, StatusCode::OK),
        (Method::GET, "/outbox".into(), None, StatusCode::OK),
        (
            Method::POST,
            "/outbox/999/retry".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/invoices".into(), None, StatusCode::OK),
        (
            Method::POST,
            "/invoices/999/retry".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/webhook-events".into(), None, StatusCode::OK),
        (
            Method::GET,
            "/webhook-events/evt_none".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/webhook-events/evt_none/retry".into(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/analytics/revenue".into(),
            None,
            StatusCode::OK,
        ),
        (Method::GET, "/analytics/usage".into(), None, StatusCode::OK),
        (
            Method::GET,
            "/analytics/top-customers".into(),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/analytics/active-customers".into(),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/analytics/refusals".into(),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/analytics/dashboard".into(),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/export/usage?format=csv".into(),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/export/ledger?format=jsonl".into(),
            None,
            StatusCode::OK,
        ),
    ];
    for (method, path, body, expected) in &routes {
        let what = format!("{method} {path}");
        // Refused first, so a refused write could not hide behind the
        // accepted one: none of these may change anything.
        for (bearer, status, code) in [
            (None, StatusCode::UNAUTHORIZED, "unauthenticated"),
            (
                Some("not-the-admin-token-at-all-000"),
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            (Some(key.as_str()), StatusCode::FORBIDDEN, "forbidden"),
        ] {
            let (got, answer) = send(&app, method.clone(), path, bearer, body.as_ref()).await;
            assert_eq!(got, status, "{what} with {bearer:?}: {answer}");
            assert_error(&answer, code, &what);
        }
        let (got, answer) = send(&app, method.clone(), path, admin, body.as_ref()).await;
        assert_eq!(got, *expected, "{what}: {answer}");
        if !expected.is_success() {
            assert_error(&answer, "not_found", &what);
        }
    }

    // What the accepted writes did, and only they: one grant of 25, the
    // new name, the subscription.
    let (_, balance) = send(
        &app,
        Method::GET,
        &format!("/customers/{id}/balance"),
        admin,
        None,
    )
    .await;
    assert_eq!(balance["balance"], 25, "{balance}");
    let (_, shown) = send(&app, Method::GET, &format!("/customers/{id}"), admin, None).await;
    assert_eq!(shown["customer"]["name"], "Ada L.", "{shown}");
    let (_, subscription) = send(
        &app,
        Method::GET,
        &format!("/customers/{id}/subscription"),
        admin,
        None,
    )
    .await;
    assert_eq!(subscription["status"], "active", "{subscription}");

    // The customer's own routes take their key, and not the admin token.
    let (status, me) = send(&app, Method::GET, "/me", Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["customer"]["id"], id.as_str(), "{me}");
    let (status, usage) = send(&app, Method::GET, "/me/usage", Some(&key), None).await;
    assert_eq!(
        (status, &usage["data"]),
        (StatusCode::OK, &json!([])),
        "{usage}"
    );
    let (status, answer) = send(&app, Method::GET, "/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(answer.get("error").is_some(), "{answer}");

    // Bad input: an unknown route, a bad id, an unknown field, a body over
    // the limit, a bad range; each in the error shape.
    let (status, answer) = send(&app, Method::GET, "/nowhere", admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&answer, "not_found", "unknown route");
    let (status, answer) = send(&app, Method::GET, "/customers/not%20an%20id", admin, None).await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(answer.get("error").is_some(), "{answer}");
    let (status, answer) = send(
        &app,
        Method::PATCH,
        &format!("/customers/{id}"),
        admin,
        Some(&json!({"nickname": "Ada"})),
    )
    .await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(answer.get("error").is_some(), "{answer}");
    let (status, answer) = send(
        &app,
        Method::POST,
        "/customers",
        admin,
        Some(&json!({"name": "x".repeat(70 * 1024)})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer.get("error").is_some(), "{answer}");
    let (status, answer) = send(
        &app,
        Method::GET,
        "/usage?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_error(&answer, "invalid_request", "reversed range");
    // Cursors this API did not give out: empty, or decoding to something
    // that is no position; the answer says it is the cursor.
    for path in [
        "/customers?cursor=",
        "/customers?cursor=YWJj",
        "/usage?cursor=",
        format!("/customers/{id}/ledger?cursor=").as_str(),
    ] {
        let (status, answer) = send(&app, Method::GET, path, admin, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_error(&answer, "invalid_request", path);
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cursor")),
            "{path}: {answer}"
        );
    }
    let (_, customers) = send(&app, Method::GET, "/customers", admin, None).await;
    assert_eq!(
        customers["data"].as_array().map(Vec::len),
        Some(1),
        "{customers}"
    );

    // Revoking the key and suspending the customer, last.
    let (status, revoked) = send(
        &app,
        Method::DELETE,
        &format!("/keys/{key_id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (status, answer) = send(&app, Method::GET, "/me", Some(&key), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, removed) = send(
        &app,
        Method::DELETE,
        &format!("/customers/{id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let (_, shown) = send(&app, Method::GET, &format!("/customers/{id}"), admin, None).await;
    assert_eq!(shown["customer"]["status"], "suspended", "{shown}");
}

each_backend!(every_route_answers_in_process);
