//! MCP protocol revisions and what differs between them for a proxy.

/// The handshake revisions, oldest first.
pub const HANDSHAKE_REVISIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The stateless revision (no `initialize`, no session).
pub const STATELESS_REVISION: &str = "2026-07-28";

/// The revision a Streamable HTTP server assumes when a client sends no
/// `MCP-Protocol-Version` header (per the 2025-06-18 transport spec).
pub const DEFAULT_HTTP_REVISION: &str = "2025-03-26";

/// Whether `version` is a revision this proxy can relay.
pub fn is_known(version: &str) -> bool {
    HANDSHAKE_REVISIONS.contains(&version) || version == STATELESS_REVISION
}

/// Whether JSON-RPC batches are part of `version`. Batching was added in
/// 2025-03-26's transport text, existed implicitly in 2024-11-05 (plain
/// JSON-RPC 2.0), and was removed in 2025-06-18.
pub fn allows_batches(version: &str) -> bool {
    matches!(version, "2024-11-05" | "2025-03-26")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rules() {
        assert!(allows_batches("2025-03-26"));
        assert!(allows_batches("2024-11-05"));
        assert!(!allows_batches("2025-06-18"));
        assert!(!allows_batches("2025-11-25"));
        assert!(!allows_batches(STATELESS_REVISION));
        assert!(is_known("2025-11-25") && !is_known("2099-01-01"));
    }
}
