//! The stdio upstream: one MCP server child process, newline-delimited JSON
//! on its stdin/stdout, its stderr copied to the log with the session id.
//!
//! A child is owned by one session. When it exits, an
//! [`UpstreamEvent::Exited`] is sent after everything it wrote to stdout has
//! been delivered, so no answer it managed to give is lost. Stopping a child
//! closes its stdin, then sends SIGTERM, then SIGKILL, as the MCP stdio
//! transport describes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::UpstreamEvent;
use super::lines::{LineRead, read_line_limited};
use crate::protocol::Message;

/// How to start the child.
#[derive(Debug, Clone)]
pub struct StdioSpec {
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Largest line accepted from the child.
    pub max_message_bytes: usize,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start upstream command {command:?}: {source}")]
pub struct SpawnError {
    command: String,
    #[source]
    source: std::io::Error,
}

/// A running child process.
#[derive(Debug)]
pub struct StdioChild {
    stdin: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    /// Cancelled once the child has exited and been reaped.
    exited: CancellationToken,
    pid: Option<u32>,
}

impl StdioChild {
    /// Starts the child and its I/O tasks. Messages it writes are sent to
    /// `events`, tagged with `generation`.
    pub fn spawn(
        spec: &StdioSpec,
        session: &str,
        generation: u64,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, SpawnError> {
        let mut command = Command::new(&spec.command);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|source| SpawnError {
            command: spec.command.clone(),
            source,
        })?;
        let pid = child.id();
        let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(1024);
        let stop = CancellationToken::new();
        let exited = CancellationToken::new();
        let session: std::sync::Arc<str> = session.into();
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(write_stdin(stdin, stdin_rx, stop.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(copy_stderr(stderr, session.clone(), pid));
        }
        let reader = child.stdout.take().map(|stdout| {
            tokio::spawn(read_stdout(
                stdout,
                events.clone(),
                spec.max_message_bytes,
                session.clone(),
            ))
        });
        tokio::spawn(supervise(
            child,
            reader,
            stop.clone(),
            exited.clone(),
            events,
            generation,
            session,
        ));
        tracing::debug!(pid, command = %spec.command, "started upstream child");
        Ok(Self {
            stdin: stdin_tx,
            stop,
            exited,
            pid,
        })
    }

    /// The queue to the child's stdin: each item is one message, already on
    /// one line (see [`crate::protocol::framing::single_line`]); the writer adds the newline.
    pub fn sender(&self) -> mpsc::Sender<Bytes> {
        self.stdin.clone()
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Asks the child to stop (stdin closed, then SIGTERM, then SIGKILL).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops the child and waits until it has exited and been reaped, at
    /// most `within` (the escalation to SIGKILL takes about 2.5 s).
    pub async fn stop_and_wait(&self, within: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(within, self.exited.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(pid = self.pid, "upstream child did not exit in time");
        }
    }
}

impl Drop for StdioChild {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies queued messages to the child's stdin until the queue closes or the
/// child is asked to stop; returning drops stdin, so the child sees EOF.
async fn write_stdin(stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>, stop: CancellationToken) {
    let mut writer = BufWriter::new(stdin);
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(bytes) = next {
            if writer.write_all(&bytes).await.is_err() || writer.write_all(b"\n").await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    events: mpsc::Sender<UpstreamEvent>,
    max_message_bytes: usize,
    session: std::sync::Arc<str>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match read_line_limited(&mut reader, &mut line, max_message_bytes).await {
            Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong) => {
                tracing::warn!(%session, limit = max_message_bytes, "upstream wrote a message over the size limit; dropped");
                continue;
            }
            Ok(LineRead::Line) => {}
            Err(e) => {
                tracing::warn!(%session, error = %e, "reading upstream stdout failed");
                return;
            }
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        match Message::parse(Bytes::copy_from_slice(trimmed)) {
            Ok(message) => {
                if events
                    .send(UpstreamEvent::Message {
                        message,
                        related: None,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let shown: String = String::from_utf8_lossy(trimmed).chars().take(200).collect();
                tracing::warn!(%session, error = %e, line = %shown, "upstream wrote a line that is not JSON-RPC; ignored");
            }
        }
    }
}

async fn copy_stderr(
    stderr: impl AsyncRead + Unpin,
    session: std::sync::Arc<str>,
    pid: Option<u32>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "mcp_meter::upstream", %session, pid, "{line}");
    }
}

async fn supervise(
    mut child: Child,
    reader: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    exited: CancellationToken,
    events: mpsc::Sender<UpstreamEvent>,
    generation: u64,
    session: std::sync::Arc<str>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop.cancelled() => {
            // Close stdin first (the writer task ends when the sender is
            // dropped; the child sees EOF), then escalate.
            terminate(&mut child).await
        }
    };
    // Deliver everything the child wrote before it exited.
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    let status = match status {
        Ok(status) => describe_status(status),
        Err(e) => format!("unknown status: {e}"),
    };
    exited.cancel();
    tracing::debug!(%session, %status, "upstream child exited");
    let _ = events
        .send(UpstreamEvent::Exited { generation, status })
        .await;
}

async fn terminate(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    drop(child.stdin.take());
    if let Ok(status) = tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
        return status;
    }
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no
        // memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        return status;
    }
    child.kill().await?;
    child.wait().await
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
