//! What each subcommand does, from a parsed [`Cli`] to an exit code.
//!
//! Exit codes: 0 success, 1 a runtime failure (cannot bind, upstream command
//! missing), 2 an invalid configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::{Config, ConfigError, LogFormat, Problem, validate};
use crate::engine::{Proxy, StartError};
use crate::transport::{http_downstream, stdio_downstream};

/// A failure that ends the process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The proxy cannot start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// The stdio session failed.
    #[error(transparent)]
    Stdio(#[from] stdio_downstream::StdioError),
    /// The demo upstream failed.
    #[error(transparent)]
    DemoUpstream(#[from] crate::demo_upstream::DemoUpstreamError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl RunError {
    fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Config(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(RunError::Runtime(e)),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

fn report(error: RunError) -> ExitCode {
    eprintln!("mcp-meter: {error}");
    error.exit_code()
}

async fn dispatch(cli: Cli) -> Result<(), RunError> {
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            init_logging(&cli.log_format, &cli.log_level, &config);
            serve_http(config).await
        }
        Command::Wrap {
            config,
            listen,
            stdio,
            api_key,
            command,
        } => {
            let mut config = match config {
                Some(path) => Config::parse_file(&path)?,
                None => Config::default(),
            };
            let mut words = command.into_iter();
            config.upstream.command = words.next();
            config.upstream.args = words.collect();
            config.upstream.url = None;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            check_problems("command line", validate(&config))?;
            init_logging(&cli.log_format, &cli.log_level, &config);
            if stdio {
                let grace = Duration::from_secs(config.server.shutdown_grace_secs);
                let proxy = Proxy::new(config)?;
                let signal_proxy = proxy.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    signal_proxy.begin_shutdown();
                });
                stdio_downstream::run(proxy, api_key, grace).await?;
                Ok(())
            } else {
                serve_http(config).await
            }
        }
        Command::Demo { listen } => {
            let mut config = Config::default();
            let exe = std::env::current_exe().map_err(|e| RunError::Bind {
                addr: listen.clone(),
                source: e,
            })?;
            config.upstream.command = Some(exe.display().to_string());
            config.upstream.args = vec!["demo-upstream".into()];
            config.server.listen = listen;
            check_problems("demo", validate(&config))?;
            init_logging(&cli.log_format, &cli.log_level, &config);
            serve_http_with(config, print_demo_banner).await
        }
        Command::DemoUpstream => {
            crate::demo_upstream::run_stdio().await?;
            Ok(())
        }
    }
}

fn check_problems(source: &str, problems: Vec<Problem>) -> Result<(), RunError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            source_name: source.into(),
            problems,
        }
        .into())
    }
}

fn check(path: &Path) -> Result<(), RunError> {
    let config = Config::load(path)?;
    if let Err(e) = Proxy::new(config.clone()) {
        return Err(ConfigError {
            source_name: path.display().to_string(),
            problems: vec![Problem {
                path: "upstream".into(),
                message: e.to_string(),
            }],
        }
        .into());
    }
    println!("{}: ok", path.display());
    Ok(())
}

fn init_logging(format: &Option<LogFormat>, level: &Option<String>, config: &Config) {
    let format = format.unwrap_or(config.logging.format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(level.as_deref().unwrap_or(&config.logging.level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve_http(config: Config) -> Result<(), RunError> {
    serve_http_with(config, |_| {}).await
}

async fn serve_http_with(config: Config, banner: impl FnOnce(&str)) -> Result<(), RunError> {
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let listen = config.server.listen.clone();
    let path = config.server.mcp_path.clone();
    let proxy = Proxy::new(config)?;
    let addr: SocketAddr = listen.parse().map_err(|_| RunError::Bind {
        addr: listen.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address"),
    })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let url = format!("http://{local}{path}");
    eprintln!("mcp-meter listening on {url}");
    banner(&url);
    proxy.spawn_idle_reaper();
    let mut server = tokio::spawn(http_downstream::serve(proxy.clone(), listener));
    let finished = tokio::select! {
        result = &mut server => Some(result),
        _ = shutdown_signal() => None,
    };
    let result = match finished {
        Some(result) => result
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(RunError::Serve),
        None => {
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: letting in-flight calls finish"
            );
            proxy.begin_shutdown();
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!("in-flight calls did not finish within the shutdown grace period");
                server.abort();
            }
            Ok(())
        }
    };
    proxy.close_all().await;
    tracing::info!("stopped");
    result
}

fn print_demo_banner(url: &str) {
    println!(
        "\nmcp-meter demo is running.\n\n  MCP endpoint:   {url}\n  upstream:       the built-in demo server (tools: echo, add, slow, fail)\n\n\
         Connect a client:\n  MCP Inspector:  npx @modelcontextprotocol/inspector --transport http --server-url {url}\n  \
         Client config:  {{\"mcpServers\": {{\"demo\": {{\"type\": \"http\", \"url\": \"{url}\"}}}}}}\n  \
         curl:           curl -s {url} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\\n                    \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' -i\n\n\
         Press Ctrl-C to stop.\n"
    );
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Keeps `Arc` in the public surface tidy for callers embedding the proxy.
pub type SharedProxy = Arc<Proxy>;
