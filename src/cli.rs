//! The command line (clap). Each subcommand maps to one function in
//! [`crate::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// mcp-meter: a transparent metering and billing proxy for MCP servers.
#[derive(Debug, Parser)]
#[command(name = "mcp-meter", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (overrides `logging.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `mcp_meter=debug` (overrides
    /// `logging.level`; `RUST_LOG` overrides both).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy as configured: Streamable HTTP on `server.listen`.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Wrap a stdio MCP server without writing a configuration first.
    Wrap {
        /// Optional configuration; its `[upstream]` is replaced by COMMAND.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve Streamable HTTP on this address (default: `server.listen`,
        /// 127.0.0.1:8080). `:0` picks a free port.
        #[arg(long, conflicts_with = "stdio")]
        listen: Option<String>,
        /// Speak MCP on this process's stdin/stdout, for clients that launch
        /// the server themselves (Claude Desktop, Cursor, agents).
        #[arg(long)]
        stdio: bool,
        /// The customer's API key for `--stdio` (later plugins check it).
        #[arg(long, env = "MCP_METER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The MCP server to run, and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate a configuration, print every problem, exit 2 if any.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The quickstart: the proxy on 127.0.0.1:8080/mcp in front of a small
    /// built-in demo MCP server.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// The built-in demo MCP server on stdio (what `demo` runs as its
    /// upstream).
    #[command(hide = true)]
    DemoUpstream,
}
