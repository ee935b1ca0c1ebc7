//! A JSON Web Key Set fetched over HTTP and cached.
//!
//! Fetches are serialised by one gate, and run on their own task so a caller
//! that goes away does not cancel a fetch others are waiting for. Every
//! completed attempt bumps a generation number; a caller that waited for the
//! gate while another caller fetched sees the new generation and uses that
//! result instead of fetching again, so concurrent callers share one fetch.
//!
//! When a fetch happens:
//! * no set yet: the caller fetches (at most one attempt a second while the
//!   provider is down);
//! * the set is older than `jwks_cache_secs`: a background refresh, while the
//!   cached set keeps serving (at most one attempt per
//!   `jwks_min_refresh_interval_secs`);
//! * a token names an unknown `kid`: the caller refetches, at most once per
//!   `jwks_min_refresh_interval_secs`; otherwise the token is refused.
//!
//! A failed fetch keeps the cached set.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::Algorithm;
use super::error::JwtError;
use super::keys::{self, VerifyingKey};

/// The largest key-set document read, in bytes.
const MAX_BODY_BYTES: usize = 1 << 20;
/// The most keys kept from one set.
const MAX_KEYS: usize = 100;
/// While no set was ever fetched, the shortest time between two attempts.
const NO_SET_RETRY: Duration = Duration::from_secs(1);

/// The key set behind a `jwks_url`.
#[derive(Debug)]
pub(crate) struct JwksCache {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: reqwest::Url,
    client: reqwest::Client,
    cache_ttl: Duration,
    min_refresh: Duration,
    state: RwLock<CacheState>,
    gate: Arc<Mutex<Gate>>,
}

#[derive(Debug, Default)]
struct CacheState {
    set: Option<Arc<KeySet>>,
    /// Bumped after every fetch attempt, successful or not.
    generation: u64,
}

#[derive(Debug, Default)]
struct Gate {
    /// When the last fetch of any kind started.
    last_attempt: Option<Instant>,
    /// When the last refetch for an unknown `kid` started.
    last_kid_refetch: Option<Instant>,
}

fn elapsed_at_least(at: Option<Instant>, interval: Duration) -> bool {
    at.is_none_or(|at| at.elapsed() >= interval)
}

#[derive(Debug)]
struct KeySet {
    keys: Vec<Entry>,
    fetched_at: Instant,
}

#[derive(Debug)]
struct Entry {
    kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    alg: Option<Algorithm>,
    key: VerifyingKey,
}

impl Entry {
    fn suits(&self, alg: Algorithm) -> bool {
        self.key.kind.supports(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

enum Lookup {
    Found(VerifyingKey),
    /// No key with that `kid` (or, without a `kid`, not exactly one key
    /// suiting the algorithm).
    Unknown,
    /// Keys with that `kid` exist, but none for the token's algorithm.
    Unsuitable,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|e| e.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Lookup::Unknown;
                }
                match named.find(|e| e.suits(alg)) {
                    Some(entry) => Lookup::Found(entry.key.clone()),
                    None => Lookup::Unsuitable,
                }
            }
            None => {
                let mut suitable = self.keys.iter().filter(|e| e.suits(alg));
                match (suitable.next(), suitable.next()) {
                    (Some(entry), None) => Lookup::Found(entry.key.clone()),
                    _ => Lookup::Unknown,
                }
            }
        }
    }

    fn is_stale(&self, ttl: Duration) -> bool {
        self.fetched_at.elapsed() >= ttl
    }
}

impl JwksCache {
    pub(crate) fn new(
        url: reqwest::Url,
        timeout: Duration,
        cache_ttl: Duration,
        min_refresh: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("mcp-meter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            shared: Arc::new(Shared {
                url,
                client,
                cache_ttl,
                min_refresh,
                state: RwLock::new(CacheState::default()),
                gate: Arc::new(Mutex::new(Gate::default())),
            }),
        })
    }

    /// Fetches the set once now (waiting for a fetch under way first).
    /// Returns whether a set is available afterwards.
    pub(crate) async fn prefetch(&self) -> bool {
        let guard = self.shared.gate.clone().lock_owned().await;
        Shared::fetch_on_task(&self.shared, guard, false).await;
        self.shared.snapshot().0.is_some()
    }

    /// The key for a token's `kid` and algorithm.
    pub(crate) async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerifyingKey, JwtError> {
        let (set, generation) = self.shared.snapshot();
        if let Some(set) = &set {
            match set.find(kid, alg) {
                Lookup::Found(key) => {
                    if set.is_stale(self.shared.cache_ttl) {
                        self.refresh_in_background();
                    }
                    return Ok(key);
                }
                Lookup::Unsuitable => return Err(JwtError::AlgNotAllowed),
                Lookup::Unknown => {}
            }
        }

        // No set, or an unknown kid: fetch, or join a fetch under way.
        let guard = self.shared.gate.clone().lock_owned().await;
        let (current, current_generation) = self.shared.snapshot();
        if current_generation == generation {
            let fetch = match &current {
                None => elapsed_at_least(
                    guard.last_attempt,
                    NO_SET_RETRY.min(self.shared.min_refresh),
                ),
                Some(set) if set.is_stale(self.shared.cache_ttl) => {
                    elapsed_at_least(guard.last_attempt, self.shared.min_refresh)
                }
                Some(_) => elapsed_at_least(guard.last_kid_refetch, self.shared.min_refresh),
            };
            if fetch {
                let for_kid = current.is_some();
                Shared::fetch_on_task(&self.shared, guard, for_kid).await;
            }
        } else {
            drop(guard);
        }

        match self.shared.snapshot().0 {
            None => Err(JwtError::JwksUnavailable),
            Some(set) => match set.find(kid, alg) {
                Lookup::Found(key) => Ok(key),
                Lookup::Unsuitable => Err(JwtError::AlgNotAllowed),
                Lookup::Unknown => Err(JwtError::UnknownKid),
            },
        }
    }

    /// Starts a refresh of a stale set, unless one is under way or the last
    /// attempt was too recent.
    fn refresh_in_background(&self) {
        let Ok(guard) = self.shared.gate.clone().try_lock_owned() else {
            return;
        };
        if !elapsed_at_least(guard.last_attempt, self.shared.min_refresh) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.fetch_holding(guard, false).await });
    }
}

impl Shared {
    fn snapshot(&self) -> (Option<Arc<KeySet>>, u64) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        (state.set.clone(), state.generation)
    }

    /// Runs one fetch on its own task (so it completes even if the caller
    /// is dropped) and waits for it.
    async fn fetch_on_task(shared: &Arc<Shared>, guard: OwnedMutexGuard<Gate>, for_kid: bool) {
        let task_shared = shared.clone();
        let task = tokio::spawn(async move { task_shared.fetch_holding(guard, for_kid).await });
        if let Err(err) = task.await {
            tracing::warn!(url = %shared.url, error = %err, "JWKS fetch task failed");
        }
    }

    /// Fetches the set and stores the outcome; the gate is held throughout.
    async fn fetch_holding(&self, mut guard: OwnedMutexGuard<Gate>, for_kid: bool) {
        let now = Instant::now();
        guard.last_attempt = Some(now);
        if for_kid {
            guard.last_kid_refetch = Some(now);
        }
        let outcome = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                state.set = Some(Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                }));
            }
            Err(err) => {
                let cached = state.set.is_some();
                tracing::warn!(url = %self.url, error = %err, kept_cached_set = cached, "JWKS fetch failed");
            }
        }
        state.generation = state.generation.wrapping_add(1);
        drop(state);
        drop(guard);
    }

    async fn fetch(&self) -> Result<Vec<Entry>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            return Err(format!("the key set is larger than {MAX_BODY_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the key set failed: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("the key set is larger than {MAX_BODY_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_key_set(&body)
    }
}

/// An error and its sources, `a: b: c`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The usable signing keys of a JWKS document. Keys that cannot be used
/// (encryption keys, symmetric keys, unsupported curves, weak RSA) are
/// skipped; a set with no usable key at all is an error.
fn parse_key_set(body: &[u8]) -> Result<Vec<Entry>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for value in raw.keys {
        if keys.len() == MAX_KEYS {
            tracing::warn!("JWKS has more than {MAX_KEYS} keys; the rest are ignored");
            break;
        }
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(|jwk| keys::from_jwk(&jwk));
        match parsed {
            Ok((key, alg)) => keys.push(Entry { kid, alg, key }),
            Err(err) => tracing::debug!(kid = ?kid, error = %err, "skipping JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err("the key set has no usable signing key".to_owned());
    }
    Ok(keys)
}
