//! The stdio downstream (`mcp-meter wrap --stdio`): the client launched
//! mcp-meter in place of the server and talks newline-delimited JSON-RPC on
//! its stdin/stdout. One process is one session.
//!
//! Requests are answered concurrently (a slow call never holds up the next
//! line). stdout carries protocol messages only; logs go to stderr.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_meter_plugin::{McpRequest, SessionInfo, TransportKind};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::lines::{LineRead, read_line_limited};
use crate::engine::{Downstream, Proxy, Session, SessionsFull};
use crate::protocol::{INVALID_REQUEST, Message, framing, is_batch, split_batch, version};

/// Why the stdio downstream stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// Reading stdin failed.
    #[error("reading stdin failed: {0}")]
    Io(#[from] std::io::Error),
    /// No session could be opened.
    #[error(transparent)]
    Full(#[from] SessionsFull),
}

/// Serves one session on stdin/stdout until stdin closes or the proxy shuts
/// down, then lets running calls finish (up to `grace`) and stops the child.
pub async fn run(
    proxy: Arc<Proxy>,
    api_key: Option<String>,
    grace: Duration,
) -> Result<(), StdioError> {
    let (out, out_rx) = mpsc::channel::<Bytes>(1024);
    let writer = tokio::spawn(write_stdout(out_rx));
    let session = proxy.open_session(TransportKind::Stdio, Downstream::Stdio(out.clone()))?;
    let api_key: Option<Arc<str>> = api_key.map(Into::into);
    let limit = proxy.config().server.max_message_bytes;
    let shutdown = proxy.shutdown_token();
    let mut stdin = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
    let mut line = Vec::with_capacity(4096);
    let mut calls = JoinSet::new();
    let result = loop {
        line.clear();
        let read = tokio::select! {
            read = read_line_limited(&mut stdin, &mut line, limit) => read,
            _ = shutdown.cancelled() => break Ok(()),
        };
        // Reap finished calls so the set does not grow.
        while calls.try_join_next().is_some() {}
        match read {
            Ok(LineRead::Eof) => break Ok(()),
            Err(e) => break Err(StdioError::Io(e)),
            Ok(LineRead::TooLong) => {
                let refusal = Message::error_response(
                    None,
                    INVALID_REQUEST,
                    &format!(
                        "message too large: messages are limited to {limit} bytes (server.max_message_bytes)"
                    ),
                    None,
                );
                let _ = out.send(refusal.as_bytes().clone()).await;
            }
            Ok(LineRead::Line) => {
                let bytes = Bytes::copy_from_slice(line.trim_ascii());
                if bytes.is_empty() {
                    continue;
                }
                handle_line(&session, bytes, &api_key, &out, &mut calls).await;
            }
        }
    };
    if tokio::time::timeout(grace, async { while calls.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("in-flight calls did not finish within the shutdown grace period");
        calls.abort_all();
    }
    proxy.close_session(&session).await;
    drop(session);
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    result
}

async fn handle_line(
    session: &Arc<Session>,
    bytes: Bytes,
    api_key: &Option<Arc<str>>,
    out: &mpsc::Sender<Bytes>,
    calls: &mut JoinSet<()>,
) {
    if is_batch(&bytes) {
        let revision = session.protocol_version();
        let allowed = revision.as_deref().is_some_and(version::allows_batches);
        if !allowed {
            let refusal = Message::error_response(
                None,
                INVALID_REQUEST,
                &format!(
                    "JSON-RPC batches are not part of MCP protocol revision {}; send one message per line",
                    revision.as_deref().unwrap_or("(none negotiated yet)")
                ),
                None,
            );
            let _ = out.send(refusal.as_bytes().clone()).await;
            return;
        }
        let items = match split_batch(&bytes) {
            Ok(items) => items,
            Err(e) => {
                let refusal = Message::error_response(None, e.code(), &e.to_string(), None);
                let _ = out.send(refusal.as_bytes().clone()).await;
                return;
            }
        };
        let session = session.clone();
        let api_key = api_key.clone();
        let out = out.clone();
        calls.spawn(async move {
            let answers = futures_util::future::join_all(
                items
                    .into_iter()
                    .map(|item| answer_one(&session, item, &api_key)),
            )
            .await;
            let answers: Vec<Message> = answers.into_iter().flatten().collect();
            if answers.is_empty() {
                return;
            }
            let mut body = vec![b'['];
            for (i, a) in answers.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(a.as_bytes());
            }
            body.push(b']');
            let _ = out.send(Bytes::from(body)).await;
        });
        return;
    }
    match Message::parse(bytes.clone()) {
        Ok(message) if !message.is_request() => {
            if let Err(e) = session.pipe_from_client(message).await {
                tracing::warn!(session = %session.id(), error = %e, "could not relay a client message");
            }
        }
        _ => {
            let session = session.clone();
            let api_key = api_key.clone();
            let out = out.clone();
            calls.spawn(async move {
                if let Some(answer) = answer_one(&session, bytes, &api_key).await {
                    let _ = out.send(answer.as_bytes().clone()).await;
                }
            });
        }
    }
}

/// Answers one message: a request's answer, a parse error's refusal, or
/// nothing for a relayed notification/response.
async fn answer_one(
    session: &Arc<Session>,
    bytes: Bytes,
    api_key: &Option<Arc<str>>,
) -> Option<Message> {
    let message = match Message::parse(bytes) {
        Ok(message) => message,
        Err(e) => {
            return Some(Message::error_response(
                None,
                e.code(),
                &e.to_string(),
                None,
            ));
        }
    };
    if !message.is_request() {
        if let Err(e) = session.pipe_from_client(message).await {
            tracing::warn!(session = %session.id(), error = %e, "could not relay a client message");
        }
        return None;
    }
    let id = message.id().cloned()?;
    let mut request = McpRequest::new(message);
    request.session = SessionInfo {
        id: Some(session.id().clone()),
        transport: TransportKind::Stdio,
        protocol_version: session.protocol_version(),
    };
    request.credentials.api_key = api_key.clone();
    Some(match session.stack().oneshot(request).await {
        Ok(response) => response.message,
        Err(error) => error.into_response(&id).message,
    })
}

async fn write_stdout(mut messages: mpsc::Receiver<Bytes>) {
    let mut stdout = BufWriter::new(tokio::io::stdout());
    while let Some(first) = messages.recv().await {
        let mut next = Some(first);
        while let Some(bytes) = next {
            let line = framing::single_line(&bytes);
            if stdout.write_all(&line).await.is_err() || stdout.write_all(b"\n").await.is_err() {
                return;
            }
            next = messages.try_recv().ok();
        }
        if stdout.flush().await.is_err() {
            return;
        }
    }
}
