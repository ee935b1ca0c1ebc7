//! The [`Authenticator`]: from a transport's credentials to a [`Caller`],
//! and whether that caller may make a given call.
//!
//! It is shared by the auth layer and by the HTTP transport, which asks it
//! before a session exists so that it can answer `401` instead of opening
//! one. A key is read from the store by an indexed lookup and then kept
//! for at most [`CREDENTIAL_LEASE`] ([`crate::key_cache`]); revoking a key
//! or suspending a customer waits out that lease before it returns, so the
//! change, made by any mcp-meter instance on the same database, applies to
//! every call that starts after it. A JWT subject's customer is read on
//! every call.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mcp_meter_plugin::Credentials;
use mcp_meter_plugin::identity::{
    Caller, CredentialKind, Customer, CustomerId, CustomerStatus, KeyScope,
};
#[cfg(doc)]
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;
use mcp_meter_plugin::ports::{NewCustomer, SharedClock, SharedDirectory, StoreError};

use crate::config::{AuthConfig, UnknownSubject};
use crate::failure::AuthFailure;
use crate::jwt::{JwtConfigError, JwtVerifier};
use crate::key::ApiKey;
use crate::key_cache::KeyCache;
use crate::last_used::LastUsed;

/// Who a request comes from, once its credential is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credential, on a method that needs none.
    Anonymous,
    /// A checked credential.
    Known(Identified),
}

/// A caller and what its credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The caller.
    pub caller: Arc<Caller>,
    /// The key's scope (unrestricted for a JWT).
    pub scope: KeyScope,
}

/// An [`Identity`] a transport established before the request entered the
/// stack; the auth layer uses it instead of checking again.
#[derive(Debug, Clone)]
pub struct TransportIdentity(pub Identity);

/// Checks credentials against the store and the JWT settings.
pub struct Authenticator {
    config: AuthConfig,
    directory: SharedDirectory,
    clock: SharedClock,
    jwt: Option<JwtVerifier>,
    last_used: LastUsed,
    keys: KeyCache,
    resource_metadata_url: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where the credential of a request came from.
enum Presented<'a> {
    None,
    Token(&'a str),
}

impl Authenticator {
    /// Builds the authenticator; fails on a JWT configuration that cannot
    /// work (a missing key file, a mismatched algorithm).
    pub fn new(
        config: AuthConfig,
        directory: SharedDirectory,
        clock: SharedClock,
    ) -> Result<Self, JwtConfigError> {
        let jwt = config
            .jwt
            .as_ref()
            .map(JwtVerifier::from_config)
            .transpose()?;
        let resource_metadata_url = config
            .resource_url
            .as_deref()
            .filter(|_| !config.authorization_servers.is_empty())
            .map(resource_metadata_url);
        Ok(Self {
            config,
            directory,
            clock,
            jwt,
            last_used: LastUsed::default(),
            keys: KeyCache::default(),
            resource_metadata_url,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The JWT verifier, when JWTs are accepted.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// The URL of the protected-resource metadata document, when an
    /// authorization server is configured.
    pub fn resource_metadata_url(&self) -> Option<&str> {
        self.resource_metadata_url.as_deref()
    }

    /// The protected-resource metadata document (RFC 9728), when an
    /// authorization server is configured.
    pub fn resource_metadata(&self) -> Option<serde_json::Value> {
        let resource = self.config.resource_url.as_ref()?;
        (!self.config.authorization_servers.is_empty()).then(|| {
            serde_json::json!({
                "resource": resource,
                "authorization_servers": self.config.authorization_servers,
                "bearer_methods_supported": ["header"],
            })
        })
    }

    /// Who sent a request for `method`: anonymous when it carries no
    /// credential and the method is public; otherwise the checked caller.
    /// A credential that is present is checked even on a public method.
    pub async fn identify(
        &self,
        credentials: &Credentials,
        method: &str,
    ) -> Result<Identity, AuthFailure> {
        match presented(credentials)? {
            Presented::None if self.config.is_public(method) => Ok(Identity::Anonymous),
            Presented::None => Err(AuthFailure::unauthenticated(
                "missing_credential",
                "missing_credential",
                "authentication required: send an API key (Authorization: Bearer mcp_… or X-API-Key) or a JWT",
            )),
            Presented::Token(token) => self.check_token(token).await.map(Identity::Known),
        }
    }

    /// Whether the identified caller may make this call: the customer must be
    /// active and the call inside the key's scope.
    pub fn authorize(
        &self,
        identity: &Identity,
        method: &str,
        tool: Option<&str>,
    ) -> Result<(), AuthFailure> {
        let Identity::Known(known) = identity else {
            return Ok(());
        };
        if known.caller.customer.status == CustomerStatus::Suspended {
            return Err(AuthFailure::forbidden(
                "customer_suspended",
                "this customer account is suspended; contact the service operator",
            ));
        }
        if !known.scope.allows(method, tool) {
            let what = match tool {
                Some(tool) if method == "tools/call" => format!("the tool {tool:?}"),
                _ => format!("the method {method:?}"),
            };
            return Err(AuthFailure::forbidden(
                "out_of_scope",
                format!("this API key's scope does not include {what}"),
            ));
        }
        if let CredentialKind::ApiKey(id) = &known.caller.credential {
            self.last_used.note(id, self.clock.now());
        }
        Ok(())
    }

    /// Writes pending `last_used_at` updates (one batch).
    pub async fn flush_last_used(&self) {
        if let Err(error) = self.last_used.flush(self.directory.as_ref()).await {
            tracing::warn!(%error, "could not record when API keys were last used; will retry");
        }
    }

    /// Flushes `last_used_at` every `auth.last_used_flush_secs` until the
    /// returned task is aborted (flush once more before that, at shutdown).
    pub fn spawn_last_used_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let every = Duration::from_secs(self.config.last_used_flush_secs.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                this.flush_last_used().await;
            }
        })
    }

    async fn check_token(&self, token: &str) -> Result<Identified, AuthFailure> {
        if token.starts_with(crate::key::KEY_PREFIX) {
            return self.check_api_key(token).await;
        }
        if token.split('.').count() == 3 {
            return self.check_jwt(token).await;
        }
        Err(AuthFailure::unauthenticated(
            "malformed_credential",
            "malformed_credential",
            "the credential is neither an mcp-meter API key (mcp_…) nor a JWT",
        ))
    }

    async fn check_api_key(&self, token: &str) -> Result<Identified, AuthFailure> {
        if !self.config.api_keys {
            return Err(AuthFailure::unauthenticated(
                "api_keys_disabled",
                "api_keys_disabled",
                "this server does not accept API keys; use a JWT",
            ));
        }
        let key = ApiKey::parse(token).map_err(|e| {
            AuthFailure::unauthenticated("malformed_api_key", "malformed_api_key", e.to_string())
        })?;
        let hash = key.hash();
        let now = self.clock.now();
        if let Some(known) = self.keys.get(&hash, now) {
            return Ok(known);
        }
        let read_at = std::time::Instant::now();
        let grant = self
            .directory
            .find_key_by_hash(&hash)
            .await
            .map_err(unavailable)?;
        let invalid = |reason| {
            AuthFailure::unauthenticated(
                reason,
                "invalid_api_key",
                "the API key is not valid (unknown, revoked or expired)",
            )
        };
        let grant = grant.ok_or_else(|| invalid("key_unknown"))?;
        if grant.key.revoked_at.is_some() {
            return Err(invalid("key_revoked"));
        }
        if !grant.key.is_usable_at(now) {
            return Err(invalid("key_expired"));
        }
        let known = Identified {
            caller: Arc::new(Caller {
                customer: grant.customer,
                credential: CredentialKind::ApiKey(grant.key.id),
            }),
            scope: grant.key.scope,
        };
        // A suspended customer's key is read every time, so resuming the
        // customer applies to the next call at once.
        if known.caller.customer.status == CustomerStatus::Active {
            self.keys
                .put(hash, read_at, known.clone(), grant.key.expires_at);
        }
        Ok(known)
    }

    async fn check_jwt(&self, token: &str) -> Result<Identified, AuthFailure> {
        let Some(verifier) = &self.jwt else {
            return Err(AuthFailure::unauthenticated(
                "jwt_disabled",
                "jwt_disabled",
                "this server does not accept JWTs; use an API key",
            ));
        };
        let verified = verifier
            .verify(token)
            .await
            .map_err(|e| AuthFailure::unauthenticated(e.reason(), e.reason(), e.to_string()))?;
        let customer = self.customer_for_subject(&verified.subject).await?;
        Ok(Identified {
            caller: Arc::new(Caller {
                customer,
                credential: CredentialKind::Jwt {
                    subject: verified.subject,
                },
            }),
            scope: KeyScope::default(),
        })
    }

    async fn customer_for_subject(&self, subject: &str) -> Result<Customer, AuthFailure> {
        if let Some(customer) = self
            .directory
            .find_customer_by_subject(subject)
            .await
            .map_err(unavailable)?
        {
            return Ok(customer);
        }
        if let Some(id) = CustomerId::parse(subject)
            && let Some(customer) = self
                .directory
                .find_customer(&id)
                .await
                .map_err(unavailable)?
        {
            return Ok(customer);
        }
        match self.config.unknown_subject {
            UnknownSubject::Reject => Err(AuthFailure::unauthenticated(
                "jwt_unknown_subject",
                "jwt_unknown_subject",
                "the token's subject is not a customer of this service",
            )),
            UnknownSubject::Provision => self
                .directory
                .provision_customer(NewCustomer {
                    name: subject.to_owned(),
                    plan_id: self.config.provision_plan.clone(),
                    external_subject: Some(subject.to_owned()),
                    ..NewCustomer::default()
                })
                .await
                .map_err(unavailable),
        }
    }
}

fn unavailable(error: StoreError) -> AuthFailure {
    tracing::warn!(%error, "credential check failed: the store did not answer");
    AuthFailure::unavailable(
        "credentials cannot be checked right now (the database is unavailable); retry shortly",
    )
}

/// The protected-resource metadata URL for a resource URL: the well-known
/// path inserted before the resource's path (RFC 9728 section 3.1).
fn resource_metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (host, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let path = path.trim_end_matches('/');
    format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}")
}

/// The one credential a request carries, from `Authorization: Bearer`,
/// `X-API-Key` or the stdio wrapper's key. Two different credentials are
/// refused rather than guessed between.
fn presented(credentials: &Credentials) -> Result<Presented<'_>, AuthFailure> {
    let mut found: Option<&str> = None;
    let headers: &HeaderMap = &credentials.headers;
    let bearer = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| malformed_header())?;
            let (scheme, token) = text.split_once(' ').ok_or_else(malformed_header)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(malformed_header());
            }
            Some(token.trim())
        }
    };
    let api_key_header = match headers.get("x-api-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| malformed_header())?.trim()),
    };
    for token in [bearer, api_key_header, credentials.api_key.as_deref()]
        .into_iter()
        .flatten()
    {
        match found {
            Some(existing) if existing != token => {
                return Err(AuthFailure::unauthenticated(
                    "conflicting_credentials",
                    "conflicting_credentials",
                    "the request carries two different credentials; send one",
                ));
            }
            _ => found = Some(token),
        }
    }
    Ok(found.map_or(Presented::None, Presented::Token))
}

fn malformed_header() -> AuthFailure {
    AuthFailure::unauthenticated(
        "malformed_credential",
        "malformed_credential",
        "the Authorization header must be \"Bearer <API key or JWT>\"",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_path() {
        assert_eq!(
            resource_metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            resource_metadata_url("https://mcp.example.com"),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }
}
