//! What each subcommand does, from a parsed [`Cli`] to an exit code.
//!
//! Exit codes: 0 success, 1 a runtime failure (cannot bind, upstream command
//! missing), 2 an invalid configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mcp_meter_billing::money::PriceText;
use mcp_meter_billing::plan::PlanConfig;
use mcp_meter_billing::plan::config::{CreditsConfig, PricesConfig};
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
    /// The database or another plugin service cannot start.
    #[error(transparent)]
    Services(#[from] crate::services::ServicesError),
    /// An admin command failed.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
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
                let running = crate::services::start(&config).await?;
                let proxy = Proxy::with_services(config, running.services())?;
                let signal_proxy = proxy.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    signal_proxy.begin_shutdown();
                });
                let result = stdio_downstream::run(proxy, api_key, grace).await;
                running.stop(grace).await;
                result?;
                Ok(())
            } else {
                serve_http(config).await
            }
        }
        Command::Demo {
            listen,
            database_url,
        } => {
            let mut config = Config::default();
            let exe = std::env::current_exe().map_err(|e| RunError::Bind {
                addr: listen.clone(),
                source: e,
            })?;
            config.upstream.command = Some(exe.display().to_string());
            config.upstream.args = vec!["demo-upstream".into()];
            config.server.listen = listen;
            config.database = Some(crate::config::DatabaseConfig {
                url: database_url.clone(),
                max_connections: 10,
                acquire_timeout_secs: 3,
            });
            config.billing.default_plan = Some(crate::admin::DEMO_PLAN.into());
            config.plans = vec![demo_plan()];
            check_problems("demo", validate(&config))?;
            init_logging(&cli.log_format, &cli.log_level, &config);
            let account = crate::admin::demo_account(&database_url).await?;
            serve_http_with(config, move |url| {
                print_demo_banner(url, &account, &database_url)
            })
            .await
        }
        Command::Migrate { database } => {
            init_logging(&cli.log_format, &cli.log_level, &Config::default());
            crate::admin::migrate(&database).await?;
            Ok(())
        }
        Command::Db { action } => {
            crate::admin::db::run(&action).await?;
            Ok(())
        }
        Command::Customers { database, action } => {
            crate::admin::customers(&database, &action).await?;
            Ok(())
        }
        Command::Keys { database, action } => {
            crate::admin::keys(&database, &action).await?;
            Ok(())
        }
        Command::Credits { database, action } => {
            crate::admin::billing::credits(&database, &action).await?;
            Ok(())
        }
        Command::Subscriptions { database, action } => {
            crate::admin::subscriptions::run(&database, &action).await?;
            Ok(())
        }
        Command::Outbox { database, action } => {
            crate::admin::outbox::run(&database, &action).await?;
            Ok(())
        }
        Command::Invoices { database, action } => {
            crate::admin::outbox::invoices(&database, &action).await?;
            Ok(())
        }
        Command::Stripe { config, action } => {
            init_logging(&cli.log_format, &cli.log_level, &Config::default());
            crate::admin::stripe::run(config.as_deref(), &action).await?;
            Ok(())
        }
        Command::Plans { config, action } => {
            crate::admin::billing::plans(config.as_deref(), &action)?;
            Ok(())
        }
        Command::Usage {
            database,
            customer,
            since,
            until,
            limit,
            daily,
            json,
        } => {
            let query = crate::admin::UsageQuery {
                customer: &customer,
                since: since.as_deref(),
                until: until.as_deref(),
                limit,
                daily,
                json,
            };
            crate::admin::usage(&database, query).await?;
            Ok(())
        }
        Command::Export { database, action } => {
            crate::admin::export::run(&database, &action).await?;
            Ok(())
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
    let mut problems = Vec::new();
    // The upstream is checked by building a passthrough proxy; the plugins'
    // services need the database, which `check` does not open.
    let mut passthrough = config.clone();
    passthrough.plugins.order = Some(Vec::new());
    if let Err(e) = Proxy::new(passthrough) {
        problems.push(Problem {
            path: "upstream".into(),
            message: e.to_string(),
        });
    }
    if let Some(jwt) = &config.auth.jwt
        && let Err(e) = mcp_meter_auth::jwt::JwtVerifier::from_config(jwt)
    {
        problems.push(Problem {
            path: "auth.jwt".into(),
            message: e.to_string(),
        });
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            source_name: path.display().to_string(),
            problems,
        }
        .into());
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// The log format in effect, once logging is set up.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Prints a line an operator (or a test) waits for, such as `listening on
/// URL`, whatever the level filter: as it is with text logs; with JSON logs
/// as one JSON object (`timestamp`, `level`, `message`, `target` and the
/// entries of `fields`), so every line of stderr stays JSON.
fn announce(message: &str, fields: serde_json::Value) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => {
            let mut line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "INFO",
                "message": message,
                "target": "mcp_meter::run",
            });
            if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields)
            {
                line.extend(fields);
            }
            eprintln!("{line}");
        }
        _ => eprintln!("{message}"),
    }
}

fn init_logging(format: &Option<LogFormat>, level: &Option<String>, config: &Config) {
    let format = format.unwrap_or(config.logging.format);
    let _ = LOG_FORMAT.set(format);
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

/// Binds `listen` (an address such as `127.0.0.1:8080`).
async fn bind(listen: &str) -> Result<TcpListener, RunError> {
    let addr: SocketAddr = listen.parse().map_err(|_| RunError::Bind {
        addr: listen.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address"),
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen.to_owned(),
            source,
        })
}

async fn serve_http_with(config: Config, banner: impl FnOnce(&str)) -> Result<(), RunError> {
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let listen = config.server.listen.clone();
    let path = config.server.mcp_path.clone();
    let running = crate::services::start(&config).await?;
    let proxy = Proxy::with_services(config, running.services())?;
    let listener = bind(&listen).await?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let url = format!("http://{local}{path}");
    announce(
        &format!("mcp-meter listening on {url}"),
        serde_json::json!({ "url": url }),
    );
    banner(&url);
    proxy.spawn_idle_reaper();
    let admin = match proxy
        .config()
        .api
        .as_ref()
        .and_then(|api| api.listen.clone())
    {
        Some(admin_listen) => {
            let admin_listener = bind(&admin_listen).await?;
            let admin_local = admin_listener.local_addr().map_err(RunError::Serve)?;
            let admin_url = format!("http://{admin_local}/api/v1");
            announce(
                &format!("mcp-meter admin API listening on {admin_url}"),
                serde_json::json!({ "url": admin_url }),
            );
            Some(tokio::spawn(http_downstream::serve_admin(
                proxy.clone(),
                admin_listener,
            )))
        }
        None => None,
    };
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
    if let Some(admin) = admin {
        proxy.begin_shutdown();
        if tokio::time::timeout(grace, admin).await.is_err() {
            tracing::warn!("admin API requests did not finish within the shutdown grace period");
        }
    }
    proxy.close_all().await;
    drop(proxy);
    running.stop(grace).await;
    tracing::info!("stopped");
    result
}

/// The demo's credits plan: 1 credit a call, 5 for `slow`; failed calls
/// are refunded.
fn demo_plan() -> PlanConfig {
    PlanConfig {
        id: crate::admin::DEMO_PLAN.into(),
        name: Some("Demo credits".into()),
        model: "credits".into(),
        currency: None,
        upgrade_url: None,
        refusal: None,
        refusal_code: None,
        prices: PricesConfig {
            default: Some(PriceText::Whole(1)),
            tools: [("slow".to_owned(), PriceText::Whole(5))].into(),
            free: Vec::new(),
            not_included: Vec::new(),
        },
        credits: Some(CreditsConfig {
            low_balance_warnings: vec![20],
            ..CreditsConfig::default()
        }),
        per_call: None,
        subscription: None,
        usage: None,
        freemium: None,
    }
}

fn print_demo_banner(url: &str, account: &crate::admin::DemoAccount, database: &str) {
    let crate::admin::DemoAccount {
        customer,
        key,
        balance,
    } = account;
    println!(
        "\nmcp-meter demo is running.\n\n  MCP endpoint:   {url}\n  upstream:       the built-in demo server (tools: echo, add, slow, fail)\n  \
         API key:        {key}\n                  (the demo customer's key; every call without it gets 401)\n  \
         Balance:        {balance} credits\n                  (plan `demo`: 1 credit a call, 5 for `slow`; failed calls are refunded;\n                  \
         each result's _meta[\"mcp-meter/billing\"] shows the cost and the balance left)\n\n\
         Connect a client:\n  MCP Inspector:  npx @modelcontextprotocol/inspector --transport http --server-url {url} --header 'Authorization: Bearer {key}'\n  \
         Client config:  {{\"mcpServers\": {{\"demo\": {{\"type\": \"http\", \"url\": \"{url}\", \"headers\": {{\"Authorization\": \"Bearer {key}\"}}}}}}}}\n  \
         curl:           curl -s {url} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\\n                    \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' -i\n\n\
         Balance:         mcp-meter credits balance --database-url {database} --customer {customer}\n\
         Ledger:          mcp-meter credits ledger --database-url {database} --customer {customer}\n\
         Usage so far:    mcp-meter usage --database-url {database} --customer {customer}\n\n\
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
