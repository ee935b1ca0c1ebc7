//! What every session of one proxy shares: the upstream recipe, timeouts,
//! restart policy and the configured plugins.

use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::Plugin;

use crate::transport::http_upstream::HttpUpstreamSpec;
use crate::transport::stdio_upstream::StdioSpec;

/// How to reach the MCP server.
#[derive(Debug, Clone)]
pub enum UpstreamSpec {
    /// A child process per session.
    Stdio(StdioSpec),
    /// A Streamable HTTP endpoint.
    Http(HttpUpstreamSpec),
}

/// Settings shared by all sessions.
pub struct SessionSettings {
    /// The upstream.
    pub upstream: UpstreamSpec,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// How long a restarted upstream may take to answer the replayed handshake.
    pub connect_timeout: Duration,
    /// First restart delay after repeated crashes.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// Server messages kept for a session with no open stream.
    pub max_buffered_messages: usize,
    /// The plugin stack, outermost first.
    pub plugins: Vec<Arc<dyn Plugin>>,
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSettings")
            .field("upstream", &self.upstream)
            .field("request_timeout", &self.request_timeout)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SessionSettings {
    /// The delay before the next start after `crashes` consecutive failures:
    /// none after the first (a one-off crash is restarted at once), then
    /// doubling from `backoff_initial` up to `backoff_max`.
    pub fn backoff(&self, crashes: u32) -> Duration {
        if crashes <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(crashes - 2).unwrap_or(u32::MAX);
        self.backoff_initial
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let settings = SessionSettings {
            upstream: UpstreamSpec::Stdio(StdioSpec {
                command: "x".into(),
                args: vec![],
                env: vec![],
                cwd: None,
                max_message_bytes: 1,
            }),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            max_buffered_messages: 1,
            plugins: vec![],
        };
        let ms = |n| settings.backoff(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [0, 250, 500, 1000]);
        assert_eq!(ms(20), 30_000);
        assert_eq!(ms(200), 30_000);
    }
}
