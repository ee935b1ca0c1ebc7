//! The `[auth.jwt]` configuration section.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::Algorithm;

/// How JWTs are checked: the `[auth.jwt]` section of the configuration.
///
/// Exactly one key source is set: `secret` (HMAC), `public_key_pem` (one
/// RSA, EC or Ed25519 public key) or `jwks_url` (an identity provider's key
/// set, fetched and cached).
///
/// ```toml
/// [auth.jwt]
/// issuer = "https://idp.example.com/"
/// audience = "mcp-meter"
/// jwks_url = "https://idp.example.com/.well-known/jwks.json"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The exact `iss` a token must carry.
    pub issuer: String,
    /// The audiences accepted: a token's `aud` (a string or a list) must
    /// name at least one of them. A single string or a list; at least one.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// The signing algorithms accepted (`"RS256"`, `"ES256"`, `"EdDSA"`,
    /// `"HS256"`, …). Default: every algorithm the configured key supports.
    /// Each one must suit the key (an HMAC algorithm with a public key, or
    /// the reverse, is a configuration error).
    #[serde(default)]
    pub algorithms: Option<Vec<Algorithm>>,
    /// The shared HMAC secret (HS256/HS384/HS512), as raw text, usually
    /// `${ENV}`-expanded. At least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// Path to a PEM file holding one public key (`BEGIN PUBLIC KEY` or
    /// `BEGIN RSA PUBLIC KEY`): RSA of at least 2048 bits (RS*/PS*), EC
    /// P-256 (ES256), EC P-384 (ES384) or Ed25519 (EdDSA).
    #[serde(default)]
    pub public_key_pem: Option<PathBuf>,
    /// An `http(s)` URL serving a JSON Web Key Set. Keys are chosen by the
    /// token's `kid`; the set is fetched lazily and cached.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The claim that names the caller (matched against a customer's
    /// external subject). It must be a non-empty string in every token.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// How long a fetched key set is used before it is refreshed, in
    /// seconds. The refresh happens in the background; the cached set keeps
    /// serving meanwhile, and also when the refresh fails.
    #[serde(default = "default_jwks_cache_secs")]
    pub jwks_cache_secs: u64,
    /// The shortest time between two fetches of the key set, in seconds. A
    /// token with an unknown `kid` triggers a refetch at most this often;
    /// otherwise it is refused.
    #[serde(default = "default_jwks_min_refresh_interval_secs")]
    pub jwks_min_refresh_interval_secs: u64,
    /// Timeout of one key-set fetch, in seconds (at least 1).
    #[serde(default = "default_jwks_timeout_secs")]
    pub jwks_timeout_secs: u64,
}

impl JwtConfig {
    /// A configuration with the given issuer and audience, no key source
    /// and every other field at its default. Set one key source before use.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: vec![audience.into()],
            algorithms: None,
            secret: None,
            public_key_pem: None,
            jwks_url: None,
            leeway_secs: default_leeway_secs(),
            subject_claim: default_subject_claim(),
            jwks_cache_secs: default_jwks_cache_secs(),
            jwks_min_refresh_interval_secs: default_jwks_min_refresh_interval_secs(),
            jwks_timeout_secs: default_jwks_timeout_secs(),
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("public_key_pem", &self.public_key_pem)
            .field("jwks_url", &self.jwks_url)
            .field("leeway_secs", &self.leeway_secs)
            .field("subject_claim", &self.subject_claim)
            .field("jwks_cache_secs", &self.jwks_cache_secs)
            .field(
                "jwks_min_refresh_interval_secs",
                &self.jwks_min_refresh_interval_secs,
            )
            .field("jwks_timeout_secs", &self.jwks_timeout_secs)
            .finish()
    }
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

fn default_jwks_cache_secs() -> u64 {
    300
}

fn default_jwks_min_refresh_interval_secs() -> u64 {
    30
}

fn default_jwks_timeout_secs() -> u64 {
    5
}

/// Reads a string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a list of strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// A `[auth.jwt]` setting that cannot work. The message starts with the
/// setting's path (`auth.jwt.public_key_pem: …`) and never contains key
/// material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JwtConfigError {
    path: String,
    message: String,
}

impl JwtConfigError {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        let path = if field.is_empty() {
            "auth.jwt".to_owned()
        } else {
            format!("auth.jwt.{field}")
        };
        Self {
            path,
            message: message.into(),
        }
    }

    /// The setting at fault, e.g. `auth.jwt.public_key_pem` (or `auth.jwt`
    /// when it is about several settings).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}
