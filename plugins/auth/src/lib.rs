//! The `auth` plugin: who is calling, and may they make this call.
//!
//! A request's credential comes from `Authorization: Bearer …` or
//! `X-API-Key` on HTTP, or from `--api-key` / `MCP_METER_API_KEY` for
//! `wrap --stdio`. It is either an mcp-meter API key ([`key`]: `mcp_…`,
//! checksummed, stored only as a SHA-256 hash) or a JWT ([`jwt`]). The
//! [`Authenticator`] turns it into a [`Caller`](mcp_meter_plugin::identity::Caller)
//! (customer + credential) by one indexed store lookup, so revocations and
//! suspensions apply on the very next call on every instance; the
//! [`AuthLayer`] refuses what it cannot identify or authorize and puts the
//! `Arc<Caller>` into the request's extensions for the layers inside it.
//!
//! ```
//! use std::sync::Arc;
//! use mcp_meter_auth::{AuthConfig, AuthLayer, Authenticator};
//! # use mcp_meter_plugin::ports::*;
//! # use mcp_meter_plugin::identity::*;
//! # struct NoKeys;
//! # #[async_trait::async_trait]
//! # impl CustomerDirectory for NoKeys {
//! #   async fn find_key_by_hash(&self, _: &[u8; 32]) -> Result<Option<KeyGrant>, StoreError> { Ok(None) }
//! #   async fn find_customer(&self, _: &CustomerId) -> Result<Option<Customer>, StoreError> { Ok(None) }
//! #   async fn find_customer_by_subject(&self, _: &str) -> Result<Option<Customer>, StoreError> { Ok(None) }
//! #   async fn provision_customer(&self, _: NewCustomer) -> Result<Customer, StoreError> { Err(StoreError::Other("no".into())) }
//! #   async fn touch_keys(&self, _: &[(KeyId, UnixMillis)]) -> Result<(), StoreError> { Ok(()) }
//! # }
//! let authenticator = Authenticator::new(AuthConfig::default(), Arc::new(NoKeys), Arc::new(SystemClock)).unwrap();
//! let layer = AuthLayer::new(Arc::new(authenticator));
//! # let _ = layer;
//! ```
#![warn(missing_docs, unreachable_pub)]

mod authenticator;
mod config;
mod failure;
pub mod jwt;
pub mod key;
mod key_cache;
mod last_used;
mod layer;

pub use authenticator::{Authenticator, Identified, Identity, TransportIdentity};
pub use config::{AuthConfig, UnknownSubject};
pub use failure::{
    AuthFailure, CODE_AUTH_UNAVAILABLE, CODE_FORBIDDEN, CODE_UNAUTHENTICATED, FailureKind,
};
pub use layer::{Auth, AuthLayer};
