//! The billing plugin of mcp-meter: turns each metered call into a charge
//! under the caller's plan, exactly once.
//!
//! * [`plan`] reads `[billing]` and `[[plans]]` from TOML and checks them
//!   ([`Catalog::compile`] lists every problem with its key path).
//! * [`BillingLayer`] is the tower layer. It sits inside the auth layer
//!   (it needs the [`Caller`](mcp_meter_plugin::identity::Caller)) and
//!   inside the usage recorder (whose call id it ties its ledger entries
//!   to). A refusal is a response, never an error: a JSON-RPC error or a
//!   tool result with `isError: true`, per plan, carrying `reason`, the
//!   amounts and where to pay.
//! * Money is integers: whole credits or micro-units of a currency
//!   ([`money`]). Never floating point.
//! * [`spawn_recovery`] starts the sweep that repairs what an unclean stop
//!   left: reservations held by calls that will never end are refunded,
//!   lost usage records of settled calls are written.
//!
//! Models: `per_call` (charge each successful call at its tier's price),
//! `subscription` (an active subscription with included calls, then
//! overage or a hard cap), `usage` (each call's units metered for the
//! payment provider), `freemium` (a free quota per window, then a refusal
//! or a paid plan) and `credits` (reserve before forwarding, settle or
//! refund after; optional periodic grants).
//!
//! ```
//! use std::sync::Arc;
//! use mcp_meter_billing::plan::{BillingConfig, Catalog, PlanConfig};
//!
//! #[derive(serde::Deserialize)]
//! struct File { plans: Vec<PlanConfig> }
//! let file: File = toml::from_str(r#"
//!     [[plans]]
//!     id = "starter"
//!     model = "credits"
//!     prices = { default = 1, tools = { "search_*" = 5 } }
//! "#).unwrap();
//! let catalog = Catalog::compile(&BillingConfig::default(), &file.plans).unwrap();
//! assert_eq!(catalog.plan("starter").unwrap().list_price("search_web"), Some(5));
//! ```
#![warn(missing_docs, unreachable_pub)]

mod charge_key;
mod credits;
mod failure;
mod freemium;
mod grants;
mod lanes;
mod layer;
mod meta;
mod meter;
pub mod money;
mod per_call;
pub mod period;
pub mod plan;
mod quota;
mod refusal;
mod retry;
mod settle;
pub mod status;
mod status_tool;
mod subscription;
mod sweeper;
mod tools_list;
mod usage;

pub use layer::{BillingLayer, BillingService};
pub use meta::META_KEY;
pub use plan::{Catalog, CheckoutOffers, DEFAULT_REFUSAL_CODE};
pub use refusal::REFUSAL_META_KEY;
pub use status::{BillingStatus, QuotaStatus, billing_status};
pub use sweeper::{ABANDONED, RecoverySettings, RoundReport, Sweeper, spawn_recovery};
