//! JWTs through the real proxy: a valid token reaches the upstream as its
//! customer (provisioned on first sight when configured), and every bad
//! token is refused with 401 before a session exists — alg none, HS/RS
//! confusion, a bad signature, expired, wrong issuer or audience, an unknown
//! `kid` at a JWKS endpoint served over real HTTP.

mod common;

use std::path::PathBuf;

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Proxy, RawClient, first_text};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";
const AUD: &str = "mcp-meter";

fn fixture(name: &str) -> PathBuf {
    common::root()
        .join("plugins/auth/tests/fixtures/jwt")
        .join(name)
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn customers(db: &str) -> Value {
    let output = std::process::Command::new(common::bin())
        .args(["customers", "list", "--json", "--database-url", db])
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn proxy_with(dir: &std::path::Path, db: &str, jwt: &str) -> Proxy {
    Proxy::serve(
        dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
             [database]\nurl = {db:?}\n[auth]\nunknown_subject = \"provision\"\nprovision_plan = \"free\"\n\
             [auth.jwt]\nissuer = {ISS:?}\naudience = {AUD:?}\n{jwt}",
            common::bin()
        ),
    )
}

async fn call_with(proxy: &Proxy, token: &str) -> common::Answer {
    RawClient::with_bearer(&proxy.url, token)
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"jwt","version":"1"}}}))
        .await
}

async fn assert_refused(proxy: &Proxy, token: &str, reason: &str) {
    let answer = call_with(proxy, token).await;
    assert_eq!(answer.status, 401, "{reason}: {answer:?}");
    assert!(answer.headers.get("mcp-session-id").is_none());
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(
        answer.response()["error"]["data"]["reason"],
        reason,
        "{answer:?}"
    );
}

#[tokio::test]
async fn jwt_with_a_pem_key_every_bad_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("jwt.db").display());
    let pem = fixture("rsa_public.pem");
    let proxy = proxy_with(
        dir.path(),
        &db,
        &format!("public_key_pem = {:?}\n", pem.display().to_string()),
    );
    let key = rsa_key();

    // A valid token: the subject becomes a customer on the configured plan.
    let token = sign(Algorithm::RS256, &key, None, &claims("user-42"));
    let mut client = RawClient::with_bearer(&proxy.url, &token);
    client.initialize("2025-11-25").await;
    let echo = client
        .call_tool(json!(2), "echo", json!({"message": "signed"}))
        .await
        .response();
    assert_eq!(first_text(&echo), "signed", "{echo}");
    let all = customers(&db);
    let provisioned = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["external_subject"] == "user-42");
    assert_eq!(
        provisioned.expect("provisioned")["plan_id"],
        "free",
        "{all}"
    );

    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("user-42").to_string());
    assert_refused(
        &proxy,
        &format!("{header_none}.{payload}."),
        "jwt_alg_not_allowed",
    )
    .await;

    // HS256 signed with the public key's PEM bytes as the HMAC secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&std::fs::read(&pem).unwrap()),
        None,
        &claims("user-42"),
    );
    assert_refused(&proxy, &confused, "jwt_alg_not_allowed").await;

    let other =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa2_private.pem")).unwrap()).unwrap();
    assert_refused(
        &proxy,
        &sign(Algorithm::RS256, &other, None, &claims("user-42")),
        "jwt_bad_signature",
    )
    .await;

    let mut expired = claims("user-42");
    expired["exp"] = json!(now() - 3600);
    assert_refused(
        &proxy,
        &sign(Algorithm::RS256, &key, None, &expired),
        "jwt_expired",
    )
    .await;
    let mut wrong_iss = claims("user-42");
    wrong_iss["iss"] = json!("https://evil.test/");
    assert_refused(
        &proxy,
        &sign(Algorithm::RS256, &key, None, &wrong_iss),
        "jwt_wrong_issuer",
    )
    .await;
    let mut wrong_aud = claims("user-42");
    wrong_aud["aud"] = json!("someone-else");
    assert_refused(
        &proxy,
        &sign(Algorithm::RS256, &key, None, &wrong_aud),
        "jwt_wrong_audience",
    )
    .await;

    // No refused token created a customer.
    assert_eq!(customers(&db).as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn jwt_with_a_jwks_endpoint_unknown_kid_is_refused() {
    let key = rsa_key();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("kid-1");
    let jwks = json!({ "keys": [jwk] }).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("jwks.db").display());
    let proxy = proxy_with(
        dir.path(),
        &db,
        &format!("jwks_url = \"http://{addr}/jwks.json\"\n"),
    );
    let good = sign(Algorithm::RS256, &key, Some("kid-1"), &claims("user-7"));
    assert_eq!(call_with(&proxy, &good).await.status, 200);
    let unknown = sign(
        Algorithm::RS256,
        &key,
        Some("kid-unknown"),
        &claims("user-7"),
    );
    assert_refused(&proxy, &unknown, "jwt_unknown_kid").await;
}

#[tokio::test]
async fn an_admin_jwt_opens_the_admin_api_only_with_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("jwt.db").display());
    let pem = fixture("rsa_public.pem");
    let proxy = proxy_with(
        dir.path(),
        &db,
        &format!(
            "public_key_pem = {:?}\n[api]\nadmin_tokens = [\"adm_0123456789abcdef0123456789abcdef\"]\n\
             admin_jwt_role_claim = \"roles\"\n",
            pem.display().to_string()
        ),
    );
    let key = rsa_key();
    let with_roles = |roles: Value| {
        let mut claims = claims("ops-1");
        claims["roles"] = roles;
        sign(Algorithm::RS256, &key, None, &claims)
    };
    let base = proxy.url.strip_suffix("/mcp").unwrap().to_owned();
    let get = |token: String| {
        let url = format!("{base}/api/v1/customers");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        get(with_roles(json!(["viewer", "mcp-meter-admin"]))).await,
        200
    );
    assert_eq!(get(with_roles(json!("mcp-meter-admin"))).await, 200);
    assert_eq!(get(with_roles(json!(["viewer"]))).await, 401);
    assert_eq!(
        get(sign(Algorithm::RS256, &key, None, &claims("ops-2"))).await,
        401
    );
    // The right role under a key the proxy does not trust.
    let other =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa2_private.pem")).unwrap()).unwrap();
    let mut forged = claims("ops-3");
    forged["roles"] = json!(["mcp-meter-admin"]);
    assert_eq!(
        get(sign(Algorithm::RS256, &other, None, &forged)).await,
        401
    );
}
