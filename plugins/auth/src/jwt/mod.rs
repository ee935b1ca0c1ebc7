//! JWT verification: the `[auth.jwt]` section and the verifier built from it.
//!
//! A token is accepted when
//! * its header's `alg` is one of the configured algorithms *and* suits the
//!   key (so `alg: none` and HMAC/RSA confusion are refused);
//! * its signature verifies with the configured secret or public key, or
//!   with the key-set key its `kid` names;
//! * `iss` is the configured issuer, `aud` names a configured audience, `exp`
//!   is present and not past, `nbf` (if present) is not in the future — both
//!   with `leeway_secs` of clock skew;
//! * the subject claim (`sub` by default) is a non-empty string.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_meter_auth::jwt::{JwtConfig, JwtVerifier};
//!
//! let mut config = JwtConfig::new("https://idp.example.com/", "mcp-meter");
//! config.jwks_url = Some("https://idp.example.com/.well-known/jwks.json".into());
//! let verifier = JwtVerifier::from_config(&config)?;
//! verifier.prefetch().await;
//! match verifier.verify(token).await {
//!     Ok(verified) => println!("caller {}", verified.subject),
//!     Err(err) => println!("refused: {} ({})", err, err.reason()),
//! }
//! # Ok(()) }
//! ```

mod config;
mod error;
mod jwks;
mod keys;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use jsonwebtoken::crypto::CryptoProvider;
use serde_json::{Map, Value};

pub use config::{JwtConfig, JwtConfigError};
pub use error::JwtError;
/// A JWS signing algorithm (`RS256`, `ES256`, `EdDSA`, `HS256`, …).
pub use jsonwebtoken::Algorithm;

use jwks::JwksCache;
use keys::{KeyKind, VerifyingKey};

/// The longest token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The subject claim's value (the configured `subject_claim`).
    pub subject: String,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Checks JWTs against one `[auth.jwt]` configuration. Cheap to clone; clones
/// share the key-set cache.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway_secs: u64,
    subject_claim: String,
    source: KeySource,
}

enum KeySource {
    Static(VerifyingKey),
    Jwks(JwksCache),
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.inner.source {
            KeySource::Static(key) => key.kind.describe(),
            KeySource::Jwks(_) => "a key set",
        };
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("algorithms", &self.inner.algorithms)
            .field("key", &source)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds a verifier, checking everything that can be checked without
    /// the network: the key source, the key itself, the algorithms against
    /// the key, the audience, the URL. A key set is not fetched here (the
    /// proxy must start while the identity provider is down); see
    /// [`JwtVerifier::prefetch`].
    pub fn from_config(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        // One pure-Rust crypto provider for the whole process, even if
        // another crate enables a second jsonwebtoken backend. If one is
        // already installed it is kept.
        let _ =
            CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);

        if config.issuer.trim().is_empty() {
            return Err(JwtConfigError::new("issuer", "must not be empty"));
        }
        if config.audience.is_empty() {
            return Err(JwtConfigError::new(
                "audience",
                "name at least one audience",
            ));
        }
        if config.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(JwtConfigError::new(
                "audience",
                "an audience must not be empty",
            ));
        }
        if config.subject_claim.trim().is_empty() {
            return Err(JwtConfigError::new("subject_claim", "must not be empty"));
        }

        let sources: Vec<&str> = [
            config.secret.as_ref().map(|_| "secret"),
            config.public_key_pem.as_ref().map(|_| "public_key_pem"),
            config.jwks_url.as_ref().map(|_| "jwks_url"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() != 1 {
            let found = if sources.is_empty() {
                "none is".to_owned()
            } else {
                format!("{} are", sources.join(" and "))
            };
            return Err(JwtConfigError::new(
                "",
                format!(
                    "set exactly one of `secret`, `public_key_pem` or `jwks_url` ({found} set)"
                ),
            ));
        }

        let (source, supported, described): (KeySource, &[Algorithm], &str) = if let Some(secret) =
            &config.secret
        {
            let key = keys::from_secret(secret).map_err(|m| JwtConfigError::new("secret", m))?;
            (
                KeySource::Static(key),
                KeyKind::Hmac.algorithms(),
                KeyKind::Hmac.describe(),
            )
        } else if let Some(path) = &config.public_key_pem {
            let key = keys::load_pem(path).map_err(|m| JwtConfigError::new("public_key_pem", m))?;
            let kind = key.kind;
            (KeySource::Static(key), kind.algorithms(), kind.describe())
        } else if let Some(url) = &config.jwks_url {
            (
                KeySource::Jwks(jwks_cache(url, config)?),
                keys::ASYMMETRIC,
                "a key set (jwks_url), which serves only public keys",
            )
        } else {
            return Err(JwtConfigError::new("", "no key source"));
        };

        let algorithms = match &config.algorithms {
            None => supported.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(JwtConfigError::new(
                    "algorithms",
                    "name at least one algorithm, or leave it out to accept all the key supports",
                ));
            }
            Some(list) => {
                let mut algorithms = Vec::with_capacity(list.len());
                for alg in list {
                    if !supported.contains(alg) {
                        return Err(JwtConfigError::new(
                            "algorithms",
                            format!(
                                "{alg:?} cannot be used with {described} (it supports {})",
                                names(supported)
                            ),
                        ));
                    }
                    if !algorithms.contains(alg) {
                        algorithms.push(*alg);
                    }
                }
                algorithms
            }
        };

        Ok(Self {
            inner: Arc::new(Inner {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                algorithms,
                leeway_secs: config.leeway_secs,
                subject_claim: config.subject_claim.clone(),
                source,
            }),
        })
    }

    /// With a `jwks_url`, fetches the key set once now and logs the outcome,
    /// so the first request need not wait for it. Never fails: if the
    /// provider is down, requests fetch the set later. Returns whether keys
    /// are available (always true for a secret or a PEM key).
    pub async fn prefetch(&self) -> bool {
        match &self.inner.source {
            KeySource::Static(_) => true,
            KeySource::Jwks(cache) => cache.prefetch().await,
        }
    }

    /// The algorithms accepted, after defaults.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.inner.algorithms
    }

    /// Checks `token` (the compact JWS, without `Bearer `) and returns its
    /// subject and claims, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        let inner = &*self.inner;
        let header = parse_header(token)?;
        let alg = header_alg(&header)?;
        if !inner.algorithms.contains(&alg) {
            return Err(JwtError::AlgNotAllowed);
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed("the `kid` header is not a string")),
        };

        let key = match &inner.source {
            KeySource::Static(key) => key.clone(),
            KeySource::Jwks(cache) => cache.key(kid, alg).await?,
        };
        if !key.kind.supports(alg) {
            return Err(JwtError::AlgNotAllowed);
        }

        let mut validation = Validation::new(alg);
        validation.leeway = inner.leeway_secs;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[inner.issuer.as_str()]);
        validation.set_audience(&inner.audience);

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)?;
        let claims = data.claims;

        // jsonwebtoken also accepts a list for `iss`; the RFC says a string.
        if claims.get("iss").and_then(Value::as_str) != Some(inner.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        let subject = match claims.get(&inner.subject_claim).and_then(Value::as_str) {
            Some(subject) if !subject.is_empty() => subject.to_owned(),
            _ => return Err(JwtError::MissingClaim(inner.subject_claim.clone())),
        };
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(JwtError::MissingClaim("exp".to_owned()))?;

        Ok(VerifiedToken {
            subject,
            claims,
            expires_at,
        })
    }
}

fn jwks_cache(url: &str, config: &JwtConfig) -> Result<JwksCache, JwtConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| JwtConfigError::new("jwks_url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(JwtConfigError::new(
            "jwks_url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    if parsed.scheme() == "http" {
        tracing::warn!(
            url = %parsed,
            "auth.jwt.jwks_url uses plain http; the signing keys can be tampered with in transit"
        );
    }
    if config.jwks_timeout_secs == 0 {
        return Err(JwtConfigError::new(
            "jwks_timeout_secs",
            "must be at least 1",
        ));
    }
    JwksCache::new(
        parsed,
        Duration::from_secs(config.jwks_timeout_secs),
        Duration::from_secs(config.jwks_cache_secs),
        Duration::from_secs(config.jwks_min_refresh_interval_secs),
    )
    .map_err(|e| JwtConfigError::new("jwks_url", format!("cannot build an HTTP client: {e}")))
}

fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decoded JOSE header of a compact JWS.
fn parse_header(token: &str) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("the token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed("the header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    Ok(header)
}

/// The header's `alg`; any name this verifier does not implement (`none`
/// included) is refused as not allowed.
fn header_alg(header: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    let name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("the header has no `alg`"))?;
    name.parse::<Algorithm>()
        .map_err(|_| JwtError::AlgNotAllowed)
}

/// A NumericDate claim as whole seconds.
fn numeric_date(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    if value.as_u64().is_some() {
        return Some(i64::MAX);
    }
    value
        .as_f64()
        .filter(|f| f.is_finite())
        .map(|f| f.round() as i64)
}
