//! MCP method names the proxy routes on.

/// The handshake request (revisions up to 2025-11-25).
pub const INITIALIZE: &str = "initialize";
/// The notification that completes the handshake.
pub const INITIALIZED: &str = "notifications/initialized";
/// Cancels a request (either direction).
pub const CANCELLED: &str = "notifications/cancelled";
/// Progress for a request that carried `_meta.progressToken`.
pub const PROGRESS: &str = "notifications/progress";
/// The metered method.
pub const TOOLS_CALL: &str = "tools/call";
/// Stateless (2026-07-28) discovery, replacing `initialize`.
pub const SERVER_DISCOVER: &str = "server/discover";
/// Stateless (2026-07-28) long-lived notification stream.
pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
