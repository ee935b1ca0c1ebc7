//! The `mcp-meter` binary.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mcp_meter::cli::Cli::parse();
    mcp_meter::run::main(cli)
}
