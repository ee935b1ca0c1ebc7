//! `mcp-meter export usage|ledger`: the rows of [`crate::export`], written
//! to a file (`--output`) or stdout batch by batch, as the API streams
//! them.

use std::fs::File;
use std::io::{BufWriter, Write};

use futures_util::StreamExt as _;
use mcp_meter_plugin::ports::UsageOutcome;

use super::{AdminError, customer_id, open_store, parse_time};
use crate::cli::{DatabaseArgs, ExportAction, ExportArgs};
use crate::export::{Export, Table};

/// `mcp-meter export`.
pub async fn run(args: &DatabaseArgs, action: &ExportAction) -> Result<(), AdminError> {
    let (export, common) = match action {
        ExportAction::Usage {
            common,
            tool,
            outcome,
        } => {
            let outcome = outcome
                .as_deref()
                .map(|o| {
                    UsageOutcome::parse(o).ok_or_else(|| {
                        AdminError::BadInput(format!(
                            "--outcome {o:?} is not one of ok, tool_error, upstream_error, refused, timeout, cancelled, recovered"
                        ))
                    })
                })
                .transpose()?;
            let mut export = export_of(Table::Usage, common)?;
            export.tool = tool.clone();
            export.outcome = outcome;
            (export, common)
        }
        ExportAction::Ledger { common } => (export_of(Table::Ledger, common)?, common),
    };
    let store = open_store(args).await?;
    let (name, sink): (String, Box<dyn Write + Send>) = match &common.output {
        Some(path) => {
            let name = path.display().to_string();
            let file = File::create(path).map_err(|e| AdminError::Write(name.clone(), e))?;
            (name, Box::new(file))
        }
        None => ("stdout".to_owned(), Box::new(std::io::stdout())),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let mut chunks = std::pin::pin!(export.stream(store));
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?)
            .map_err(|e| AdminError::Write(name.clone(), e))?;
    }
    out.flush().map_err(|e| AdminError::Write(name, e))?;
    Ok(())
}

fn export_of(table: Table, common: &ExportArgs) -> Result<Export, AdminError> {
    let since = common
        .since
        .as_deref()
        .map(|t| parse_time(t, "--since"))
        .transpose()?;
    let until = common
        .until
        .as_deref()
        .map(|t| parse_time(t, "--until"))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s.0 >= u.0
    {
        return Err(AdminError::BadInput(
            "--since must be before --until".into(),
        ));
    }
    Ok(Export {
        table,
        format: common.format,
        customer: common.customer.as_deref().map(customer_id).transpose()?,
        tool: None,
        outcome: None,
        since,
        until,
    })
}
