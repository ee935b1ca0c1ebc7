//! JWT verification with real keys and real signatures, and a key set served
//! over real local HTTP.
//!
//! The keys in `tests/fixtures/jwt/` are test-only, made with:
//!
//! ```sh
//! openssl genrsa -traditional -out rsa_private.pem 2048
//! openssl rsa -in rsa_private.pem -pubout -out rsa_public.pem
//! openssl rsa -in rsa_private.pem -RSAPublicKey_out -out rsa_public_pkcs1.pem
//! openssl genrsa -traditional -out rsa2_private.pem 2048    # + rsa2_public.pem
//! openssl genrsa 1024 | openssl rsa -pubout -out rsa1024_public.pem
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec_p256_private.pem
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec_p384_private.pem
//! openssl genpkey -algorithm ED25519 -out ed25519_private.pem
//! openssl pkey -in <private>.pem -pubout -out <public>.pem
//! # unsupported kinds, public halves only: secp256k1 and Ed448
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use mcp_meter_auth::jwt::{Algorithm, JwtConfig, JwtConfigError, JwtError, JwtVerifier};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const ISS: &str = "https://idp.test/";
const AUD: &str = "mcp-meter";
const SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

// ---------------------------------------------------------------- helpers

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims() -> Value {
    json!({ "iss": ISS, "aud": AUD, "sub": "user-1", "exp": now() + 600, "iat": now() })
}

fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hmac_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("rsa_private.pem")).unwrap()
}

fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("rsa2_private.pem")).unwrap()
}

fn p256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("ec_p256_private.pem")).unwrap()
}

fn p384_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("ec_p384_private.pem")).unwrap()
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&read_fixture("ed25519_private.pem")).unwrap()
}

fn secret_config() -> JwtConfig {
    let mut config = JwtConfig::new(ISS, AUD);
    config.secret = Some(SECRET.to_owned());
    config
}

fn pem_config(file: &str) -> JwtConfig {
    let mut config = JwtConfig::new(ISS, AUD);
    config.public_key_pem = Some(fixture(file));
    config
}

fn jwks_config(url: &str) -> JwtConfig {
    let mut config = JwtConfig::new(ISS, AUD);
    config.jwks_url = Some(url.to_owned());
    config
}

fn verifier(config: &JwtConfig) -> JwtVerifier {
    JwtVerifier::from_config(config).unwrap()
}

async fn refusal(verifier: &JwtVerifier, token: &str) -> &'static str {
    match verifier.verify(token).await {
        Ok(verified) => panic!("token accepted for {}", verified.subject),
        Err(err) => err.reason(),
    }
}

fn config_error(config: &JwtConfig) -> JwtConfigError {
    match JwtVerifier::from_config(config) {
        Ok(verifier) => panic!("config accepted: {verifier:?}"),
        Err(err) => err,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The token with one bit of its signature flipped.
fn flip_signature_bit(token: &str) -> String {
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[5] ^= 0x01;
    format!("{message}.{}", b64(&signature))
}

// ------------------------------------------------------- every algorithm

#[tokio::test]
async fn every_algorithm_verifies_a_valid_token() {
    let cases: Vec<(Algorithm, EncodingKey, JwtConfig)> = vec![
        (Algorithm::HS256, hmac_key(), secret_config()),
        (Algorithm::HS384, hmac_key(), secret_config()),
        (Algorithm::HS512, hmac_key(), secret_config()),
        (Algorithm::RS256, rsa_key(), pem_config("rsa_public.pem")),
        (Algorithm::RS384, rsa_key(), pem_config("rsa_public.pem")),
        (Algorithm::RS512, rsa_key(), pem_config("rsa_public.pem")),
        (Algorithm::PS256, rsa_key(), pem_config("rsa_public.pem")),
        (Algorithm::PS384, rsa_key(), pem_config("rsa_public.pem")),
        (Algorithm::PS512, rsa_key(), pem_config("rsa_public.pem")),
        (
            Algorithm::RS256,
            rsa_key(),
            pem_config("rsa_public_pkcs1.pem"),
        ),
        (
            Algorithm::ES256,
            p256_key(),
            pem_config("ec_p256_public.pem"),
        ),
        (
            Algorithm::ES384,
            p384_key(),
            pem_config("ec_p384_public.pem"),
        ),
        (Algorithm::EdDSA, ed_key(), pem_config("ed25519_public.pem")),
    ];
    for (alg, key, config) in cases {
        let verifier = verifier(&config);
        let exp = now() + 600;
        let token = sign(
            alg,
            &key,
            None,
            &claims_with(json!({ "sub": format!("user-{alg:?}"), "exp": exp, "plan": "pro" })),
        );
        let verified = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified.subject, format!("user-{alg:?}"), "{alg:?}");
        assert_eq!(verified.expires_at, exp, "{alg:?}");
        assert_eq!(verified.claims["plan"], "pro", "{alg:?}");
        // The same token with one signature bit flipped is refused.
        assert_eq!(
            refusal(&verifier, &flip_signature_bit(&token)).await,
            "jwt_bad_signature",
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn default_algorithms_follow_the_key_kind() {
    assert_eq!(
        verifier(&secret_config()).algorithms(),
        [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
    );
    assert_eq!(
        verifier(&pem_config("rsa_public.pem")).algorithms(),
        [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512
        ]
    );
    assert_eq!(
        verifier(&pem_config("ec_p256_public.pem")).algorithms(),
        [Algorithm::ES256]
    );
    assert_eq!(
        verifier(&pem_config("ec_p384_public.pem")).algorithms(),
        [Algorithm::ES384]
    );
    assert_eq!(
        verifier(&pem_config("ed25519_public.pem")).algorithms(),
        [Algorithm::EdDSA]
    );
}

// ------------------------------------------------------------- refusals

#[tokio::test]
async fn alg_none_is_refused() {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let token = format!("{header}.{payload}.");
    for config in [secret_config(), pem_config("rsa_public.pem")] {
        assert_eq!(
            refusal(&verifier(&config), &token).await,
            "jwt_alg_not_allowed"
        );
    }
    // Other spellings and unknown names too.
    for alg in ["None", "NONE", "HS1", ""] {
        let header = b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
        let token = format!("{header}.{payload}.");
        assert_eq!(
            refusal(&verifier(&secret_config()), &token).await,
            "jwt_alg_not_allowed",
            "{alg}"
        );
    }
}

#[tokio::test]
async fn hmac_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: HS256 with the public key's PEM bytes
    // as the HMAC secret.
    let public_pem = read_fixture("rsa_public.pem");
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims(),
    );
    let verifier = verifier(&pem_config("rsa_public.pem"));
    assert_eq!(refusal(&verifier, &forged).await, "jwt_alg_not_allowed");
    // And the reverse: an RS256 token against an HMAC configuration.
    let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
    assert_eq!(
        refusal(&self::verifier(&secret_config()), &token).await,
        "jwt_alg_not_allowed"
    );
}

#[tokio::test]
async fn a_token_signed_by_another_key_or_altered_is_refused() {
    let verifier = verifier(&pem_config("rsa_public.pem"));
    let other = sign(Algorithm::RS256, &rsa2_key(), None, &claims());
    assert_eq!(refusal(&verifier, &other).await, "jwt_bad_signature");

    // A changed payload with the original signature.
    let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let payload = b64(claims_with(json!({ "sub": "admin" }))
        .to_string()
        .as_bytes());
    let altered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(refusal(&verifier, &altered).await, "jwt_bad_signature");

    let hmac = self::verifier(&secret_config());
    let wrong_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
        None,
        &claims(),
    );
    assert_eq!(refusal(&hmac, &wrong_secret).await, "jwt_bad_signature");
}

#[tokio::test]
async fn expiry_allows_the_leeway_and_no_more() {
    let verifier = verifier(&secret_config()); // leeway 30 s
    let expired = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "exp": now() - 120 })),
    );
    assert_eq!(refusal(&verifier, &expired).await, "jwt_expired");
    let within_leeway = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "exp": now() - 10 })),
    );
    assert!(verifier.verify(&within_leeway).await.is_ok());

    let mut strict = secret_config();
    strict.leeway_secs = 0;
    assert_eq!(
        refusal(&self::verifier(&strict), &within_leeway).await,
        "jwt_expired"
    );
}

#[tokio::test]
async fn a_future_nbf_is_refused() {
    let verifier = verifier(&secret_config());
    let future = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "nbf": now() + 300 })),
    );
    assert_eq!(refusal(&verifier, &future).await, "jwt_not_yet_valid");
    let within_leeway = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "nbf": now() + 10 })),
    );
    assert!(verifier.verify(&within_leeway).await.is_ok());
    let past = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "nbf": now() - 10 })),
    );
    assert!(verifier.verify(&past).await.is_ok());
}

#[tokio::test]
async fn issuer_must_match_exactly() {
    let verifier = verifier(&secret_config());
    for iss in [
        json!("https://evil.test/"),
        json!("https://idp.test"),
        json!([ISS]),
    ] {
        let token = sign(
            Algorithm::HS256,
            &hmac_key(),
            None,
            &claims_with(json!({ "iss": iss })),
        );
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwt_wrong_issuer",
            "{iss}"
        );
    }
}

#[tokio::test]
async fn audience_must_name_a_configured_one() {
    let mut config = secret_config();
    config.audience = vec![AUD.to_owned(), "other-api".to_owned()];
    let verifier = verifier(&config);
    for aud in [json!("someone-else"), json!(["a", "b"]), json!([])] {
        let token = sign(
            Algorithm::HS256,
            &hmac_key(),
            None,
            &claims_with(json!({ "aud": aud })),
        );
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwt_wrong_audience",
            "{aud}"
        );
    }
    for aud in [json!("other-api"), json!(["x", AUD])] {
        let token = sign(
            Algorithm::HS256,
            &hmac_key(),
            None,
            &claims_with(json!({ "aud": aud })),
        );
        assert!(verifier.verify(&token).await.is_ok(), "{aud}");
    }
}

#[tokio::test]
async fn required_claims_must_be_present() {
    let verifier = verifier(&secret_config());
    for claim in ["exp", "iss", "aud", "sub"] {
        let token = sign(
            Algorithm::HS256,
            &hmac_key(),
            None,
            &claims_with(json!({ claim: null })),
        );
        let err = verifier.verify(&token).await.unwrap_err();
        assert_eq!(err.reason(), "jwt_missing_claim", "{claim}");
        assert_eq!(err, JwtError::MissingClaim(claim.to_owned()));
    }
    // The subject must be a non-empty string.
    for sub in [json!(""), json!(42), json!(true)] {
        let token = sign(
            Algorithm::HS256,
            &hmac_key(),
            None,
            &claims_with(json!({ "sub": sub })),
        );
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwt_missing_claim",
            "{sub}"
        );
    }
}

#[tokio::test]
async fn the_subject_claim_is_configurable() {
    let mut config = secret_config();
    config.subject_claim = "email".to_owned();
    let verifier = verifier(&config);
    let token = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "email": "a@example.com" })),
    );
    assert_eq!(
        verifier.verify(&token).await.unwrap().subject,
        "a@example.com"
    );
    let without = sign(Algorithm::HS256, &hmac_key(), None, &claims());
    let err = verifier.verify(&without).await.unwrap_err();
    assert_eq!(err, JwtError::MissingClaim("email".to_owned()));
}

#[tokio::test]
async fn claims_of_the_wrong_type_and_fractional_dates() {
    let verifier = verifier(&secret_config());
    let string_exp = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "exp": "tomorrow" })),
    );
    // jsonwebtoken treats a registered claim it cannot read as absent, and
    // a structured `sub` as undecodable.
    assert_eq!(refusal(&verifier, &string_exp).await, "jwt_missing_claim");
    let list_sub = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "sub": ["user"] })),
    );
    assert_eq!(refusal(&verifier, &list_sub).await, "jwt_malformed");
    let exp = now() + 100;
    let fractional = sign(
        Algorithm::HS256,
        &hmac_key(),
        None,
        &claims_with(json!({ "exp": exp as f64 + 0.4 })),
    );
    assert_eq!(verifier.verify(&fractional).await.unwrap().expires_at, exp);
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let verifier = verifier(&secret_config());
    let good = sign(Algorithm::HS256, &hmac_key(), None, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = b64(b"not json");
    let cases = [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{not_json}.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"[1,2]"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(br#"{"typ":"JWT"}"#), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","kid":7}"#),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","crit":["exp"]}"#),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], parts[1], "%%%"),
        "x".repeat(20_000),
    ];
    for token in cases {
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwt_malformed",
            "{token:.60}"
        );
    }
    // A correctly signed payload that is not a JSON object.
    let header = b64(br#"{"alg":"HS256"}"#);
    let payload = b64(b"\"just a string\"");
    let signature = jsonwebtoken::crypto::sign(
        format!("{header}.{payload}").as_bytes(),
        &hmac_key(),
        Algorithm::HS256,
    )
    .unwrap();
    let token = format!("{header}.{payload}.{signature}");
    assert_eq!(refusal(&verifier, &token).await, "jwt_malformed");
}

#[tokio::test]
async fn an_algorithm_outside_the_configured_list_is_refused() {
    let mut config = pem_config("rsa_public.pem");
    config.algorithms = Some(vec![Algorithm::RS256]);
    let verifier = verifier(&config);
    assert!(
        verifier
            .verify(&sign(Algorithm::RS256, &rsa_key(), None, &claims()))
            .await
            .is_ok()
    );
    for alg in [Algorithm::PS256, Algorithm::RS512] {
        let token = sign(alg, &rsa_key(), None, &claims());
        assert_eq!(
            refusal(&verifier, &token).await,
            "jwt_alg_not_allowed",
            "{alg:?}"
        );
    }
    let mut hmac = secret_config();
    hmac.algorithms = Some(vec![Algorithm::HS512]);
    let token = sign(Algorithm::HS256, &hmac_key(), None, &claims());
    assert_eq!(
        refusal(&self::verifier(&hmac), &token).await,
        "jwt_alg_not_allowed"
    );
    // ES384 against a P-256 key.
    let token = sign(Algorithm::ES384, &p384_key(), None, &claims());
    assert_eq!(
        refusal(&self::verifier(&pem_config("ec_p256_public.pem")), &token).await,
        "jwt_alg_not_allowed"
    );
}

#[test]
fn every_reason_is_stable_and_messages_hold_no_secrets() {
    let all = [
        (JwtError::Malformed("x"), "jwt_malformed"),
        (JwtError::AlgNotAllowed, "jwt_alg_not_allowed"),
        (JwtError::BadSignature, "jwt_bad_signature"),
        (JwtError::Expired, "jwt_expired"),
        (JwtError::NotYetValid, "jwt_not_yet_valid"),
        (JwtError::WrongIssuer, "jwt_wrong_issuer"),
        (JwtError::WrongAudience, "jwt_wrong_audience"),
        (JwtError::MissingClaim("sub".into()), "jwt_missing_claim"),
        (JwtError::UnknownKid, "jwt_unknown_kid"),
        (JwtError::JwksUnavailable, "jwks_unavailable"),
    ];
    for (err, reason) in all {
        assert_eq!(err.reason(), reason);
        assert!(!err.to_string().is_empty());
    }
    let debug = format!("{:?}", secret_config());
    assert!(!debug.contains(SECRET), "{debug}");
    let debug = format!("{:?}", verifier(&secret_config()));
    assert!(!debug.contains(SECRET), "{debug}");
}

// -------------------------------------------------------- configuration

#[test]
fn config_reads_from_toml_shaped_data_with_defaults() {
    let config: JwtConfig = serde_json::from_value(json!({
        "issuer": ISS,
        "audience": AUD,
        "jwks_url": "https://idp.test/jwks.json",
    }))
    .unwrap();
    assert_eq!(config.audience, [AUD]);
    assert_eq!(config.algorithms, None);
    assert_eq!(config.leeway_secs, 30);
    assert_eq!(config.subject_claim, "sub");
    assert_eq!(config.jwks_cache_secs, 300);
    assert_eq!(config.jwks_min_refresh_interval_secs, 30);
    assert_eq!(config.jwks_timeout_secs, 5);
    assert_eq!(config, {
        let mut expected = JwtConfig::new(ISS, AUD);
        expected.jwks_url = Some("https://idp.test/jwks.json".into());
        expected
    });

    let config: JwtConfig = serde_json::from_value(json!({
        "issuer": ISS,
        "audience": ["a", "b"],
        "algorithms": ["RS256", "PS256"],
        "public_key_pem": "/etc/key.pem",
        "leeway_secs": 5,
    }))
    .unwrap();
    assert_eq!(config.audience, ["a", "b"]);
    assert_eq!(
        config.algorithms,
        Some(vec![Algorithm::RS256, Algorithm::PS256])
    );

    for bad in [
        json!({ "issuer": ISS, "audience": AUD, "secret": SECRET, "extra": 1 }),
        json!({ "issuer": ISS, "audience": AUD, "secret": SECRET, "algorithms": ["none"] }),
        json!({ "issuer": ISS, "secret": SECRET }),
        json!({ "audience": AUD, "secret": SECRET }),
        json!({ "issuer": ISS, "audience": 3, "secret": SECRET }),
    ] {
        assert!(
            serde_json::from_value::<JwtConfig>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn bad_configs_name_the_setting() {
    let mut cases: Vec<(JwtConfig, &str, &str)> = Vec::new();

    let mut c = pem_config("does-not-exist.pem");
    c.public_key_pem = Some(fixture("does-not-exist.pem"));
    cases.push((c, "auth.jwt.public_key_pem", "cannot read"));
    cases.push((
        pem_config("rsa_private.pem"),
        "auth.jwt.public_key_pem",
        "private key",
    ));
    cases.push((
        pem_config("ec_p256_private.pem"),
        "auth.jwt.public_key_pem",
        "private key",
    ));
    cases.push((
        pem_config("README.md"),
        "auth.jwt.public_key_pem",
        "no PEM block",
    ));
    cases.push((
        pem_config("rsa1024_public.pem"),
        "auth.jwt.public_key_pem",
        "at least 2048",
    ));
    cases.push((
        pem_config("ec_secp256k1_public.pem"),
        "auth.jwt.public_key_pem",
        "unsupported curve",
    ));
    cases.push((
        pem_config("ed448_public.pem"),
        "auth.jwt.public_key_pem",
        "not an RSA",
    ));

    let mut c = pem_config("rsa_public.pem");
    c.algorithms = Some(vec![Algorithm::HS256]);
    cases.push((
        c,
        "auth.jwt.algorithms",
        "HS256 cannot be used with an RSA key",
    ));
    let mut c = pem_config("ec_p256_public.pem");
    c.algorithms = Some(vec![Algorithm::ES256, Algorithm::ES384]);
    cases.push((c, "auth.jwt.algorithms", "ES384"));
    let mut c = secret_config();
    c.algorithms = Some(vec![Algorithm::RS256]);
    cases.push((
        c,
        "auth.jwt.algorithms",
        "RS256 cannot be used with an HMAC secret",
    ));
    let mut c = jwks_config("https://idp.test/jwks.json");
    c.algorithms = Some(vec![Algorithm::HS256]);
    cases.push((c, "auth.jwt.algorithms", "HS256"));
    let mut c = secret_config();
    c.algorithms = Some(vec![]);
    cases.push((c, "auth.jwt.algorithms", "at least one"));

    let mut c = secret_config();
    c.secret = Some("too-short-secret".to_owned());
    cases.push((c, "auth.jwt.secret", "at least 32"));

    for url in ["not a url", "ftp://idp.test/jwks.json", "https://"] {
        cases.push((jwks_config(url), "auth.jwt.jwks_url", ""));
    }
    let mut c = jwks_config("https://idp.test/jwks.json");
    c.jwks_timeout_secs = 0;
    cases.push((c, "auth.jwt.jwks_timeout_secs", "at least 1"));

    let mut c = secret_config();
    c.audience = vec![];
    cases.push((c, "auth.jwt.audience", "at least one"));
    let mut c = secret_config();
    c.audience = vec![String::new()];
    cases.push((c, "auth.jwt.audience", "empty"));
    let mut c = secret_config();
    c.issuer = String::new();
    cases.push((c, "auth.jwt.issuer", "empty"));
    let mut c = secret_config();
    c.subject_claim = String::new();
    cases.push((c, "auth.jwt.subject_claim", "empty"));

    let mut c = secret_config();
    c.jwks_url = Some("https://idp.test/jwks.json".to_owned());
    cases.push((c, "auth.jwt", "secret and jwks_url are set"));
    cases.push((JwtConfig::new(ISS, AUD), "auth.jwt", "none is set"));

    for (config, path, needle) in cases {
        let err = config_error(&config);
        assert_eq!(err.path(), path, "{err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{path}: ")), "{text}");
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        assert!(!text.contains("too-short-secret"), "{text}");
        assert!(!text.contains("MII"), "key material in {text}");
    }
}

// ------------------------------------------------------------------ JWKS

#[derive(Clone)]
struct ServerState {
    body: Arc<Mutex<String>>,
    failing: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    seen: Arc<watch::Sender<usize>>,
}

async fn serve_jwks(State(state): State<ServerState>) -> Response {
    let n = state.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    state.seen.send_replace(n);
    if state.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let body = state.body.lock().unwrap().clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JWKS endpoint on 127.0.0.1 that counts its requests.
struct JwksServer {
    url: String,
    state: ServerState,
    seen: watch::Receiver<usize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let (seen_tx, seen) = watch::channel(0);
        let state = ServerState {
            body: Arc::new(Mutex::new(json!({ "keys": keys }).to_string())),
            failing: Arc::new(AtomicBool::new(false)),
            fetches: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(seen_tx),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            state,
            seen,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.state.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Waits (without sleeping) until the server has had `n` requests.
    async fn wait_for_fetches(&mut self, n: usize) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.seen.wait_for(|seen| *seen >= n),
        )
        .await
        .expect("the expected JWKS fetch never came")
        .unwrap();
    }

    /// Stops listening and closes every connection.
    async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, pin_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !pin_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

fn standard_keys() -> Vec<Value> {
    vec![
        jwk(&rsa_key(), Algorithm::RS256, "rsa-1", false),
        jwk(&rsa2_key(), Algorithm::RS256, "rsa-2", false),
        jwk(&p256_key(), Algorithm::ES256, "ec-1", true),
        jwk(&p384_key(), Algorithm::ES384, "ec-2", false),
        jwk(&ed_key(), Algorithm::EdDSA, "ed-1", true),
    ]
}

#[tokio::test]
async fn jwks_key_is_chosen_by_kid_and_cached() {
    let server = JwksServer::start(standard_keys()).await;
    let verifier = verifier(&jwks_config(&server.url));
    assert_eq!(server.fetches(), 0, "nothing is fetched at construction");

    let cases = [
        (Algorithm::RS256, rsa_key(), "rsa-1"),
        (Algorithm::PS512, rsa_key(), "rsa-1"),
        (Algorithm::ES256, p256_key(), "ec-1"),
        (Algorithm::ES384, p384_key(), "ec-2"),
        (Algorithm::EdDSA, ed_key(), "ed-1"),
    ];
    for (alg, key, kid) in &cases {
        let token = sign(*alg, key, Some(kid), &claims());
        let verified = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified.subject, "user-1");
    }
    assert_eq!(server.fetches(), 1, "one fetch, then the cache");

    // The right kid with the wrong key's signature.
    let token = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-1"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_bad_signature");
    // A kid whose key is of another kind.
    let token = sign(Algorithm::ES256, &p256_key(), Some("rsa-1"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_alg_not_allowed");
    // No kid: the one key suiting the algorithm is used; with several
    // (rsa-1, rsa-2), which one? Refused.
    let token = sign(Algorithm::EdDSA, &ed_key(), None, &claims());
    assert!(verifier.verify(&token).await.is_ok());
    let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    // HMAC is never accepted with a key set.
    let token = sign(Algorithm::HS256, &hmac_key(), Some("rsa-1"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_alg_not_allowed");
}

#[tokio::test]
async fn jwks_jwk_alg_and_use_are_respected() {
    let mut enc_key = jwk(&rsa2_key(), Algorithm::RS256, "enc-1", false);
    enc_key["use"] = json!("enc");
    let mut oct = json!({ "kty": "oct", "kid": "oct-1", "k": b64(SECRET.as_bytes()) });
    oct["alg"] = json!("HS256");
    let keys = vec![
        jwk(&rsa_key(), Algorithm::RS256, "pinned", true),
        enc_key,
        oct,
        json!({ "kty": "XYZ", "kid": "weird" }),
        json!({ "kty": "EC", "kid": "bad-ec", "crv": "P-256", "x": "AAAA", "y": "AAAA" }),
        json!({ "kty": "OKP", "kid": "bad-ed", "crv": "Ed25519", "x": "AAAA" }),
        json!("not an object"),
    ];
    let server = JwksServer::start(keys).await;
    let mut config = jwks_config(&server.url);
    config.jwks_min_refresh_interval_secs = 3600;
    let verifier = verifier(&config);

    let token = sign(Algorithm::RS256, &rsa_key(), Some("pinned"), &claims());
    assert!(verifier.verify(&token).await.is_ok());
    // The JWK says RS256: PS256 with the same key is refused.
    let token = sign(Algorithm::PS256, &rsa_key(), Some("pinned"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_alg_not_allowed");
    // An encryption key is not a signing key: skipped, so unknown.
    let token = sign(Algorithm::RS256, &rsa2_key(), Some("enc-1"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    // Broken keys are skipped rather than failing the set.
    let token = sign(Algorithm::EdDSA, &ed_key(), Some("bad-ed"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    // Without a kid, the only RS256 key is used.
    let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn jwks_unknown_kid_refetches_once_then_is_refused() {
    let server = JwksServer::start(standard_keys()).await;
    let verifier = verifier(&jwks_config(&server.url)); // min interval 30 s
    assert!(verifier.prefetch().await);
    assert_eq!(server.fetches(), 1);

    let token = sign(Algorithm::RS256, &rsa_key(), Some("nope"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    assert_eq!(server.fetches(), 2, "one refetch for the unknown kid");

    // Another unknown kid within the interval: no fetch.
    let token = sign(Algorithm::RS256, &rsa_key(), Some("nope-2"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    assert_eq!(refusal(&verifier, &token).await, "jwt_unknown_kid");
    assert_eq!(server.fetches(), 2);

    // Known kids keep working without fetching.
    let token = sign(Algorithm::ES256, &p256_key(), Some("ec-1"), &claims());
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_on_the_unknown_kid_refetch() {
    let server = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "rsa-1", false)]).await;
    let verifier = verifier(&jwks_config(&server.url));
    let old = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
    assert!(verifier.verify(&old).await.is_ok());
    assert_eq!(server.fetches(), 1);

    // The provider rotates: the new key replaces the old one.
    server.serve(vec![jwk(&rsa2_key(), Algorithm::RS256, "rsa-2", false)]);
    let new = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &claims());
    assert_eq!(verifier.verify(&new).await.unwrap().subject, "user-1");
    assert_eq!(server.fetches(), 2);
    // The retired key is gone from the cache.
    assert_eq!(refusal(&verifier, &old).await, "jwt_unknown_kid");
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn jwks_concurrent_unknown_kids_share_one_fetch() {
    let server = JwksServer::start(standard_keys()).await;
    let verifier = verifier(&jwks_config(&server.url));
    assert!(verifier.prefetch().await);
    assert_eq!(server.fetches(), 1);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let verifier = verifier.clone();
        let token = sign(
            Algorithm::RS256,
            &rsa_key(),
            Some(&format!("unknown-{i}")),
            &claims(),
        );
        tasks.spawn(async move { verifier.verify(&token).await.map(|_| ()) });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap(), Err(JwtError::UnknownKid));
    }
    assert_eq!(server.fetches(), 2, "20 unknown kids, one refetch");
}

#[tokio::test]
async fn jwks_concurrent_first_requests_share_one_fetch() {
    let server = JwksServer::start(standard_keys()).await;
    let verifier = verifier(&jwks_config(&server.url));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let verifier = verifier.clone();
        let kid = if i % 2 == 0 { "rsa-1" } else { "unknown" };
        let token = sign(Algorithm::RS256, &rsa_key(), Some(kid), &claims());
        tasks.spawn(async move { (kid, verifier.verify(&token).await.map(|v| v.subject)) });
    }
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            ("rsa-1", outcome) => assert_eq!(outcome, Ok("user-1".to_owned())),
            (_, outcome) => assert_eq!(outcome, Err(JwtError::UnknownKid)),
        }
    }
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn jwks_stale_set_is_refreshed_in_the_background() {
    let mut server = JwksServer::start(standard_keys()).await;
    let mut config = jwks_config(&server.url);
    config.jwks_cache_secs = 0;
    config.jwks_min_refresh_interval_secs = 0;
    let verifier = verifier(&config);
    assert!(verifier.prefetch().await);
    assert_eq!(server.fetches(), 1);
    // The set is stale at once: the token is checked against the cached set
    // and a refresh starts.
    let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
    assert!(verifier.verify(&token).await.is_ok());
    server.wait_for_fetches(2).await;

    // With the default cache time, no refresh.
    let fresh = self::verifier(&jwks_config(&server.url));
    assert!(fresh.prefetch().await);
    let before = server.fetches();
    for _ in 0..5 {
        assert!(fresh.verify(&token).await.is_ok());
    }
    assert_eq!(server.fetches(), before);
}

#[tokio::test]
async fn jwks_failed_fetch_keeps_the_cached_set() {
    let mut server = JwksServer::start(standard_keys()).await;
    let mut config = jwks_config(&server.url);
    config.jwks_cache_secs = 0;
    config.jwks_min_refresh_interval_secs = 0;
    let verifier = verifier(&config);
    assert!(verifier.prefetch().await);
    let known = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
    let unknown = sign(Algorithm::RS256, &rsa_key(), Some("nope"), &claims());

    // The provider answers with errors.
    server.fail(true);
    assert!(verifier.verify(&known).await.is_ok());
    let before = server.fetches();
    // An unknown kid fetches inline; the fetch fails, the set stays.
    assert_eq!(refusal(&verifier, &unknown).await, "jwt_unknown_kid");
    assert!(server.fetches() > before);
    assert!(verifier.verify(&known).await.is_ok());

    // The provider is gone altogether.
    server.stop().await;
    assert!(
        verifier.prefetch().await,
        "the cached set is still available"
    );
    assert!(verifier.verify(&known).await.is_ok());
    assert_eq!(refusal(&verifier, &unknown).await, "jwt_unknown_kid");
    assert!(verifier.verify(&known).await.is_ok());
}

#[tokio::test]
async fn jwks_unavailable_without_a_cached_set() {
    // Nothing listens on the port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let verifier = verifier(&jwks_config(&url));
    assert!(!verifier.prefetch().await);
    let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
    assert_eq!(refusal(&verifier, &token).await, "jwks_unavailable");

    // A provider answering with errors, or with a document that is no key
    // set, is unavailable too.
    let server = JwksServer::start(standard_keys()).await;
    server.fail(true);
    let verifier = self::verifier(&jwks_config(&server.url));
    assert_eq!(refusal(&verifier, &token).await, "jwks_unavailable");
    assert_eq!(server.fetches(), 1);

    let server = JwksServer::start(vec![]).await;
    server.serve(vec![json!({ "kty": "oct", "kid": "x", "k": "AAAA" })]);
    let verifier = self::verifier(&jwks_config(&server.url));
    assert_eq!(refusal(&verifier, &token).await, "jwks_unavailable");
}

#[tokio::test]
async fn static_keys_need_no_prefetch() {
    assert!(verifier(&secret_config()).prefetch().await);
    assert!(verifier(&pem_config("ed25519_public.pem")).prefetch().await);
}
