//! The engine: sessions, routing, and the plugin stack built from
//! configuration. Transports hand it messages; it hands them to the right
//! upstream session and routes the answers back.

mod forward;
mod registry;
mod services;
mod session;
mod settings;
mod stack;
mod stateless;

use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::{BoxMcpService, ProxyError, TransportKind};
use tokio_util::sync::CancellationToken;

pub use registry::{SessionRegistry, SessionsFull};
pub use services::PluginServices;
pub use session::{Downstream, InterimSink, Session, UpstreamHeaders};
pub use settings::{SessionSettings, UpstreamSpec};
pub use stack::plugins_from_config;

use crate::config::{Config, resolve_command};
use crate::transport::http_upstream::{HttpUpstreamError, HttpUpstreamSpec};
use crate::transport::stdio_upstream::StdioSpec;

/// Why the proxy cannot start with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The upstream program is not on `PATH` (or not executable).
    #[error(
        "upstream command {0:?} was not found or is not executable (checked PATH and upstream.cwd)"
    )]
    CommandNotFound(String),
    /// The upstream URL or headers are unusable.
    #[error(transparent)]
    HttpUpstream(#[from] HttpUpstreamError),
    /// Neither `command` nor `url` is set.
    #[error("no upstream is configured: set upstream.command or upstream.url")]
    NoUpstream,
    /// A configured plugin needs a service that was not started.
    #[error("plugin {0:?} needs the [database] section and its services, which were not started")]
    PluginNotStarted(String),
    /// A plugin name this build does not know.
    #[error("unknown plugin {0:?}")]
    UnknownPlugin(String),
    /// A plugin's configuration cannot work (`mcp-meter check` says the same).
    #[error("{0}")]
    PluginConfig(String),
}

/// One running proxy: its settings and its sessions.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    settings: Arc<SessionSettings>,
    sessions: SessionRegistry,
    shutdown: CancellationToken,
    /// The plugin stack around [`stateless::StatelessForward`], shared by all
    /// stateless (2026-07-28) requests.
    stateless_stack: BoxMcpService,
    /// The services the plugins share.
    services: PluginServices,
}

/// The readiness of the upstream, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamReadiness {
    /// Whether a new session could reach the upstream now.
    pub ready: bool,
    /// What was checked and what was found.
    pub detail: String,
}

impl Proxy {
    /// Builds a passthrough proxy (no plugin services) from a validated
    /// configuration. Fails when the upstream command cannot be found, so
    /// `serve` fails at start, naming it.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        Self::with_services(config, PluginServices::default())
    }

    /// Builds a proxy whose plugins use `services` (the store, the
    /// authenticator, the usage recorder).
    pub fn with_services(
        config: Config,
        services: PluginServices,
    ) -> Result<Arc<Self>, StartError> {
        let upstream_config = &config.upstream;
        let max = config.server.max_message_bytes;
        let upstream = match (&upstream_config.command, &upstream_config.url) {
            (Some(command), _) => {
                if resolve_command(command, upstream_config.cwd.as_deref()).is_none() {
                    return Err(StartError::CommandNotFound(command.clone()));
                }
                UpstreamSpec::Stdio(StdioSpec {
                    command: command.clone(),
                    args: upstream_config.args.clone(),
                    env: upstream_config
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    cwd: upstream_config.cwd.clone(),
                    max_message_bytes: max,
                })
            }
            (None, Some(url)) => UpstreamSpec::Http(HttpUpstreamSpec::new(
                url,
                &upstream_config
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
                max,
                Duration::from_secs(upstream_config.connect_timeout_secs),
            )?),
            (None, None) => return Err(StartError::NoUpstream),
        };
        let settings = Arc::new(SessionSettings {
            upstream,
            request_timeout: Duration::from_secs(config.server.request_timeout_secs),
            connect_timeout: Duration::from_secs(upstream_config.connect_timeout_secs),
            backoff_initial: Duration::from_millis(upstream_config.restart_backoff_initial_ms),
            backoff_max: Duration::from_millis(upstream_config.restart_backoff_max_ms),
            max_buffered_messages: config.server.max_buffered_messages,
            plugins: plugins_from_config(&config, &services)?,
        });
        let stateless_stack = settings.plugins.iter().rev().fold(
            BoxMcpService::new(stateless::StatelessForward::new(settings.clone())),
            |inner, plugin| plugin.wrap(inner),
        );
        Ok(Arc::new(Self {
            sessions: SessionRegistry::new(config.server.max_sessions),
            config: Arc::new(config),
            settings,
            shutdown: CancellationToken::new(),
            stateless_stack,
            services,
        }))
    }

    /// The credential checker, when the `auth` plugin is configured. The
    /// HTTP transport asks it before opening a session, to answer `401`.
    pub fn authenticator(&self) -> Option<&Arc<mcp_meter_auth::Authenticator>> {
        self.services.authenticator.as_ref()
    }

    /// The metrics, when a `[database]` is configured.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::Metrics>> {
        self.services.metrics.as_ref()
    }

    /// Stripe, when `[stripe]` (and a `[database]`) is configured.
    pub fn stripe(&self) -> Option<&Arc<crate::stripe::StripeRuntime>> {
        self.services.stripe.as_ref()
    }

    /// The store, when a `[database]` is configured.
    pub fn store(&self) -> Option<&Arc<dyn crate::store::Store>> {
        self.services.store.as_ref()
    }

    /// The configuration the proxy runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The live sessions.
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Cancelled when the proxy begins to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Opens a new session.
    pub fn open_session(
        &self,
        transport: TransportKind,
        downstream: Downstream,
    ) -> Result<Arc<Session>, SessionsFull> {
        self.sessions.insert_with(|id| {
            tracing::debug!(session = %id, ?transport, "session opened");
            Session::new(id, transport, self.settings.clone(), downstream)
        })
    }

    /// The plugin stack for stateless (2026-07-28) requests, which belong
    /// to no session.
    pub fn stateless_stack(&self) -> BoxMcpService {
        self.stateless_stack.clone()
    }

    /// Relays a stateless notification to an HTTP upstream; with a stdio
    /// upstream there is no stateless peer to give it to, so it is dropped.
    pub async fn stateless_notify(
        &self,
        notification: &crate::protocol::Message,
        headers: &http::HeaderMap,
    ) -> Result<(), ProxyError> {
        match &self.settings.upstream {
            UpstreamSpec::Http(spec) => {
                crate::transport::http_stateless::notify(spec, notification, headers).await
            }
            UpstreamSpec::Stdio(_) => Ok(()),
        }
    }

    /// Closes and forgets a session.
    pub async fn close_session(&self, session: &Session) {
        self.sessions.remove(session.id());
        session.close().await;
    }

    /// Closes sessions idle longer than `server.session_idle_timeout_secs`,
    /// checking every few seconds until shutdown.
    pub fn spawn_idle_reaper(self: &Arc<Self>) {
        let proxy = self.clone();
        let idle = Duration::from_secs(self.config.server.session_idle_timeout_secs);
        let every = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = proxy.shutdown.cancelled() => return,
                }
                for session in proxy.sessions.take_idle(idle) {
                    tracing::info!(session = %session.id(), "closing idle session");
                    session.close().await;
                }
            }
        });
    }

    /// Starts shutting down: streams end, new sessions are refused.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Closes every session (stopping every child).
    pub async fn close_all(&self) {
        let sessions = self.sessions.drain();
        futures_util::future::join_all(sessions.iter().map(|s| s.close())).await;
    }

    /// Whether a new session could reach the upstream now.
    pub async fn upstream_readiness(&self) -> UpstreamReadiness {
        match &self.settings.upstream {
            UpstreamSpec::Stdio(spec) => {
                match resolve_command(&spec.command, spec.cwd.as_deref()) {
                    Some(path) => UpstreamReadiness {
                        ready: true,
                        detail: format!("command {} is executable", path.display()),
                    },
                    None => UpstreamReadiness {
                        ready: false,
                        detail: format!(
                            "command {:?} is not found or not executable",
                            spec.command
                        ),
                    },
                }
            }
            UpstreamSpec::Http(spec) => match spec.probe().await {
                Ok(()) => UpstreamReadiness {
                    ready: true,
                    detail: format!("{} answers", spec.url()),
                },
                Err(e) => UpstreamReadiness {
                    ready: false,
                    detail: format!("{} does not answer: {e}", spec.url()),
                },
            },
        }
    }
}
