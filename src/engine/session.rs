//! A downstream MCP session and the upstream session it owns.
//!
//! The session is where routing happens: it keeps the requests waiting for an
//! upstream answer (by request id), relays the upstream's notifications and
//! server→client requests to the right downstream stream, restarts a crashed
//! stdio child (replaying the client's `initialize`), and fails every pending
//! request with a clear error when the upstream goes away.
//!
//! It must never block one session on another, and never hold a lock across
//! an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::{
    BoxMcpService, McpRequest, McpResponse, ProxyError, SessionId, TransportKind,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::forward::ForwardService;
use super::settings::{SessionSettings, UpstreamSpec};
use crate::protocol::{Message, MessageKind, RequestId, framing, methods};
use crate::transport::UpstreamEvent;
use crate::transport::http_upstream::HttpUpstream;
use crate::transport::stdio_upstream::StdioChild;

/// Where a request's interim messages (progress, server→client requests sent
/// while it runs) go: the downstream stream that carries its answer. A
/// transport puts this in the request's extensions.
#[derive(Debug, Clone)]
pub struct InterimSink(pub mpsc::Sender<Message>);

/// Extra HTTP headers to send upstream with this request (the stateless
/// revision's `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`).
#[derive(Debug, Clone)]
pub struct UpstreamHeaders(pub HeaderMap);

/// How server-initiated messages reach the client when they belong to no
/// running request.
#[derive(Debug)]
pub enum Downstream {
    /// The proxy's stdout (stdio downstream).
    Stdio(mpsc::Sender<Bytes>),
    /// The session's `GET` stream, or else a running POST stream, or else a
    /// bounded buffer until the client opens a `GET` stream.
    Http,
}

struct Pending {
    reply: oneshot::Sender<Result<Message, ProxyError>>,
    interim: Option<mpsc::Sender<Message>>,
    progress_token: Option<Box<str>>,
}

enum Link {
    Stdio {
        child: Option<StdioChild>,
        generation: u64,
        started_at: Instant,
        crashes: u32,
        last_exit: Option<String>,
        next_start: Option<Instant>,
    },
    Http {
        upstream: Arc<HttpUpstream>,
        needs_reinit: bool,
    },
}

struct State {
    pending: HashMap<RequestId, Pending>,
    init_request: Option<Message>,
    initialized_sent: bool,
    protocol_version: Option<Arc<str>>,
    link: Link,
    get_stream: Option<mpsc::Sender<Message>>,
    buffered: VecDeque<Message>,
    replay_counter: u64,
    last_active: Instant,
}

/// One downstream session.
pub struct Session {
    id: SessionId,
    transport: TransportKind,
    settings: Arc<SessionSettings>,
    downstream: Downstream,
    state: Mutex<State>,
    restart: tokio::sync::Mutex<()>,
    events: mpsc::Sender<UpstreamEvent>,
    stack: BoxMcpService,
    closed: CancellationToken,
    /// The customer whose credential opened the session, once bound.
    owner: std::sync::OnceLock<Option<CustomerId>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// Creates a session and its router task. The upstream starts with the
    /// first request.
    pub fn new(
        id: SessionId,
        transport: TransportKind,
        settings: Arc<SessionSettings>,
        downstream: Downstream,
    ) -> Arc<Self> {
        let (events, events_rx) = mpsc::channel(1024);
        let link = match &settings.upstream {
            UpstreamSpec::Stdio(_) => Link::Stdio {
                child: None,
                generation: 0,
                started_at: Instant::now(),
                crashes: 0,
                last_exit: None,
                next_start: None,
            },
            UpstreamSpec::Http(spec) => Link::Http {
                upstream: HttpUpstream::new(spec.clone(), id.as_str(), events.clone()),
                needs_reinit: false,
            },
        };
        let session = Arc::new_cyclic(|weak: &Weak<Session>| {
            let inner = BoxMcpService::new(ForwardService::new(weak.clone()));
            let stack = settings
                .plugins
                .iter()
                .rev()
                .fold(inner, |inner, plugin| plugin.wrap(inner));
            Session {
                id,
                transport,
                settings: settings.clone(),
                downstream,
                state: Mutex::new(State {
                    pending: HashMap::new(),
                    init_request: None,
                    initialized_sent: false,
                    protocol_version: None,
                    link,
                    get_stream: None,
                    buffered: VecDeque::new(),
                    replay_counter: 0,
                    last_active: Instant::now(),
                }),
                restart: tokio::sync::Mutex::new(()),
                events,
                stack,
                closed: CancellationToken::new(),
                owner: std::sync::OnceLock::new(),
            }
        });
        tokio::spawn(route_events(Arc::downgrade(&session), events_rx));
        session
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Binds the session to the customer whose credential opened it (`None`
    /// for an anonymous `initialize`). Only the first call has an effect.
    pub fn bind_owner(&self, owner: Option<CustomerId>) {
        let _ = self.owner.set(owner);
    }

    /// The customer the session belongs to, if it was opened with a
    /// credential.
    pub fn owner(&self) -> Option<&CustomerId> {
        self.owner.get().and_then(Option::as_ref)
    }

    /// The downstream transport.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// The plugin stack for this session's requests (cheap to clone).
    pub fn stack(&self) -> BoxMcpService {
        self.stack.clone()
    }

    /// The protocol revision negotiated by `initialize`, once known.
    pub fn protocol_version(&self) -> Option<Arc<str>> {
        self.lock().protocol_version.clone()
    }

    /// Whether the session has finished its `initialize` exchange.
    pub fn is_initialized(&self) -> bool {
        self.lock().init_request.is_some()
    }

    /// Whether the session has been closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// A token cancelled when the session closes.
    pub fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Whether the session has had no traffic and no running request for
    /// `idle`.
    pub fn is_idle(&self, now: Instant, idle: Duration) -> bool {
        let state = self.lock();
        state.pending.is_empty() && now.duration_since(state.last_active) >= idle
    }

    /// The number of requests waiting for the upstream.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.lock().last_active = Instant::now();
    }

    /// Sends one request upstream and waits for its answer. Called by the
    /// innermost service of the plugin stack.
    pub(super) async fn forward(
        self: Arc<Self>,
        mut request: McpRequest,
    ) -> Result<McpResponse, ProxyError> {
        if self.is_closed() {
            return Err(ProxyError::SessionClosed);
        }
        self.touch();
        let Some(id) = request.message.id().cloned() else {
            return Err(ProxyError::Internal(
                "forwarded a message that is not a request".into(),
            ));
        };
        let is_initialize = request.method() == methods::INITIALIZE;
        if !is_initialize {
            self.ensure_upstream().await?;
        } else {
            self.ensure_started().await?;
        }
        let interim = request.extensions.remove::<InterimSink>().map(|s| s.0);
        let headers = request.extensions.remove::<UpstreamHeaders>().map(|h| h.0);
        let progress_token = progress_token(&request.message);
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.pending.contains_key(&id) {
                return Err(ProxyError::DuplicateId(id));
            }
            state.pending.insert(
                id.clone(),
                Pending {
                    reply,
                    interim,
                    progress_token,
                },
            );
        }
        let mut guard = PendingGuard {
            session: self.clone(),
            id: id.clone(),
            sent: false,
            done: false,
            abort: None,
            reason: "the client went away",
        };
        guard.abort = self.send_upstream(&request.message, headers).await?;
        guard.sent = true;
        let timeout = self.settings.request_timeout;
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                guard.done = true;
                return Err(ProxyError::SessionClosed);
            }
            Err(_) => {
                guard.reason = "mcp-meter: request timed out";
                return Err(ProxyError::Timeout { after: timeout });
            }
        };
        guard.done = true;
        let message = answer?;
        if is_initialize && message.kind() == MessageKind::Response {
            self.record_initialize(&request.message, &message);
        }
        Ok(McpResponse::new(message))
    }

    fn record_initialize(&self, request: &Message, response: &Message) {
        #[derive(Deserialize)]
        struct InitializeResult {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        let version = response
            .result()
            .and_then(|r| serde_json::from_str::<InitializeResult>(r.get()).ok())
            .and_then(|r| r.protocol_version);
        let mut state = self.lock();
        state.init_request = Some(request.clone());
        if let Some(version) = version {
            if let Link::Http { upstream, .. } = &state.link {
                upstream.set_protocol_version(&version);
            }
            state.protocol_version = Some(version.into());
        }
    }

    /// Relays a client notification or response upstream.
    pub async fn pipe_from_client(self: &Arc<Self>, message: Message) -> Result<(), ProxyError> {
        self.touch();
        match message.method() {
            Some(methods::INITIALIZED) => self.lock().initialized_sent = true,
            Some(methods::CANCELLED) => {
                if let Some(id) = cancelled_request_id(&message) {
                    let pending = self.lock().pending.remove(&id);
                    if let Some(pending) = pending {
                        let _ = pending.reply.send(Err(ProxyError::Cancelled));
                    }
                }
            }
            _ => {}
        }
        self.ensure_upstream().await?;
        self.send_upstream(&message, None).await.map(|_| ())
    }

    async fn send_upstream(
        &self,
        message: &Message,
        headers: Option<HeaderMap>,
    ) -> Result<Option<AbortHandle>, ProxyError> {
        enum Target {
            Stdio(Option<mpsc::Sender<Bytes>>, Option<String>),
            Http(Arc<HttpUpstream>),
        }
        let target = match &self.lock().link {
            Link::Stdio {
                child, last_exit, ..
            } => Target::Stdio(child.as_ref().map(StdioChild::sender), last_exit.clone()),
            Link::Http { upstream, .. } => Target::Http(upstream.clone()),
        };
        match target {
            Target::Stdio(Some(sender), _) => sender
                .send(framing::single_line(message.as_bytes()))
                .await
                .map(|_| None)
                .map_err(|_| ProxyError::UpstreamExited {
                    status: "exited".into(),
                }),
            Target::Stdio(None, last_exit) => Err(ProxyError::UpstreamExited {
                status: last_exit.unwrap_or_else(|| "not running".into()),
            }),
            Target::Http(upstream) => upstream.send(message, headers).await.map_err(|reason| {
                ProxyError::UpstreamUnavailable {
                    reason,
                    retry_after: None,
                }
            }),
        }
    }

    /// Starts the stdio child if none runs (used by `initialize`: nothing to
    /// replay).
    async fn ensure_started(&self) -> Result<(), ProxyError> {
        self.start_child_if_needed(false).await
    }

    /// Makes sure an upstream is there and knows the session: restarts a
    /// crashed child (with backoff) or a lost HTTP session and replays the
    /// client's `initialize`.
    async fn ensure_upstream(&self) -> Result<(), ProxyError> {
        self.start_child_if_needed(true).await
    }

    async fn start_child_if_needed(&self, replay: bool) -> Result<(), ProxyError> {
        if self.upstream_ready() {
            return Ok(());
        }
        let _restart = self.restart.lock().await;
        if self.upstream_ready() {
            return Ok(());
        }
        if self.is_closed() {
            return Err(ProxyError::SessionClosed);
        }
        let spawned = {
            let mut state = self.lock();
            match &mut state.link {
                Link::Stdio {
                    child,
                    generation,
                    started_at,
                    crashes,
                    last_exit,
                    next_start,
                } => {
                    let now = Instant::now();
                    if let Some(at) = next_start.filter(|at| now < *at) {
                        {
                            return Err(ProxyError::UpstreamUnavailable {
                                reason: format!(
                                    "the upstream MCP server exited ({}) {} time{} in a row; next restart in {} ms",
                                    last_exit.as_deref().unwrap_or("unknown status"),
                                    crashes,
                                    if *crashes == 1 { "" } else { "s" },
                                    (at - now).as_millis()
                                ),
                                retry_after: Some(at - now),
                            });
                        }
                    }
                    let UpstreamSpec::Stdio(spec) = &self.settings.upstream else {
                        return Err(ProxyError::Internal("stdio link without stdio spec".into()));
                    };
                    *generation += 1;
                    match StdioChild::spawn(
                        spec,
                        self.id.as_str(),
                        *generation,
                        self.events.clone(),
                    ) {
                        Ok(new_child) => {
                            tracing::info!(session = %self.id, pid = new_child.pid(), generation = *generation, "upstream child started");
                            *child = Some(new_child);
                            *started_at = now;
                            *next_start = None;
                            true
                        }
                        Err(e) => {
                            *crashes += 1;
                            let delay = self.settings.backoff(*crashes);
                            *next_start = Some(now + delay);
                            *last_exit = Some(e.to_string());
                            tracing::error!(session = %self.id, error = %e, "cannot start the upstream");
                            return Err(ProxyError::UpstreamUnavailable {
                                reason: e.to_string(),
                                retry_after: Some(delay),
                            });
                        }
                    }
                }
                Link::Http {
                    upstream,
                    needs_reinit,
                } => {
                    if *needs_reinit {
                        upstream.reset();
                        *needs_reinit = false;
                        true
                    } else {
                        false
                    }
                }
            }
        };
        if spawned && replay {
            self.replay_handshake().await?;
        }
        Ok(())
    }

    fn upstream_ready(&self) -> bool {
        match &self.lock().link {
            Link::Stdio { child, .. } => child.is_some(),
            Link::Http { needs_reinit, .. } => !needs_reinit,
        }
    }

    /// Sends the client's recorded `initialize` (with a proxy-owned id) and
    /// `notifications/initialized` to a fresh upstream, so it serves the
    /// session as if nothing had happened.
    async fn replay_handshake(&self) -> Result<(), ProxyError> {
        let (init, initialized, id) = {
            let mut state = self.lock();
            let Some(init) = state.init_request.clone() else {
                return Ok(());
            };
            state.replay_counter += 1;
            let id = RequestId::string(&format!("mcp-meter-replay-{}", state.replay_counter));
            (init, state.initialized_sent, id)
        };
        let (reply, answer) = oneshot::channel();
        self.lock().pending.insert(
            id.clone(),
            Pending {
                reply,
                interim: None,
                progress_token: None,
            },
        );
        let result = async {
            self.send_upstream(&init.with_id(&id), None).await?;
            let answer = tokio::time::timeout(self.settings.connect_timeout, answer)
                .await
                .map_err(|_| ProxyError::UpstreamUnavailable {
                    reason: "the restarted upstream did not answer initialize in time".into(),
                    retry_after: None,
                })?
                .map_err(|_| ProxyError::SessionClosed)??;
            if answer.kind() != MessageKind::Response {
                return Err(ProxyError::UpstreamUnavailable {
                    reason: "the restarted upstream refused the replayed initialize".into(),
                    retry_after: None,
                });
            }
            if initialized {
                self.send_upstream(&Message::notification(methods::INITIALIZED, None), None)
                    .await?;
            }
            Ok(())
        }
        .await;
        self.lock().pending.remove(&id);
        if result.is_ok() {
            tracing::info!(session = %self.id, "replayed the handshake on the new upstream");
        }
        result
    }

    /// Routes one event from the upstream.
    async fn route(self: &Arc<Self>, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Message { message, related } => {
                self.route_message(message, related).await
            }
            UpstreamEvent::Exited { generation, status } => self.on_child_exit(generation, status),
            UpstreamEvent::SessionExpired => {
                tracing::warn!(session = %self.id, "the upstream HTTP session expired; it will be re-initialized");
                if let Link::Http { needs_reinit, .. } = &mut self.lock().link {
                    *needs_reinit = true;
                }
            }
        }
    }

    async fn route_message(self: &Arc<Self>, message: Message, related: Option<RequestId>) {
        match message.kind() {
            MessageKind::Response | MessageKind::ErrorResponse => {
                let pending = message.id().and_then(|id| self.lock().pending.remove(id));
                match pending {
                    Some(pending) => {
                        let _ = pending.reply.send(Ok(message));
                    }
                    None => {
                        tracing::debug!(session = %self.id, id = ?message.id(), "upstream answered a request nobody waits for; dropped")
                    }
                }
            }
            MessageKind::Notification | MessageKind::Request => {
                let interim = {
                    let state = self.lock();
                    let by_token = (message.method() == Some(methods::PROGRESS))
                        .then(|| progress_token(&message))
                        .flatten()
                        .and_then(|token| {
                            state
                                .pending
                                .values()
                                .find(|p| p.progress_token.as_deref() == Some(&*token))
                                .and_then(|p| p.interim.clone())
                        });
                    by_token.or_else(|| {
                        related
                            .as_ref()
                            .and_then(|id| state.pending.get(id))
                            .and_then(|p| p.interim.clone())
                    })
                };
                self.deliver(message, interim).await;
            }
        }
    }

    /// Delivers a server-initiated message to the client.
    async fn deliver(&self, message: Message, interim: Option<mpsc::Sender<Message>>) {
        let message = match interim {
            Some(sink) => match sink.send(message).await {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => message,
        };
        match &self.downstream {
            Downstream::Stdio(out) => {
                let _ = out.send(message.as_bytes().clone()).await;
            }
            Downstream::Http => {
                let mut message = message;
                let get = self.lock().get_stream.clone();
                if let Some(get) = get {
                    match get.send(message).await {
                        Ok(()) => return,
                        Err(e) => {
                            message = e.0;
                            let mut state = self.lock();
                            if state
                                .get_stream
                                .as_ref()
                                .is_some_and(|s| s.same_channel(&get))
                            {
                                state.get_stream = None;
                            }
                        }
                    }
                }
                let running = self
                    .lock()
                    .pending
                    .values()
                    .filter_map(|p| p.interim.clone())
                    .next();
                if let Some(running) = running {
                    match running.send(message).await {
                        Ok(()) => return,
                        Err(e) => message = e.0,
                    }
                }
                let mut state = self.lock();
                if state.buffered.len() >= self.settings.max_buffered_messages {
                    state.buffered.pop_front();
                    tracing::warn!(session = %self.id, "no open stream for server messages; dropped the oldest buffered one");
                }
                state.buffered.push_back(message);
            }
        }
    }

    /// Opens the session's standalone stream (`GET /mcp`), replacing any
    /// earlier one, and hands it the messages buffered meanwhile.
    pub fn attach_get_stream(&self) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(256);
        let mut state = self.lock();
        while let Some(message) = state.buffered.pop_front() {
            if let Err(e) = tx.try_send(message) {
                let message = match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                state.buffered.push_front(message);
                break;
            }
        }
        state.get_stream = Some(tx);
        rx
    }

    fn on_child_exit(&self, generation: u64, status: String) {
        let failed = {
            let mut state = self.lock();
            let Link::Stdio {
                child,
                generation: current,
                started_at,
                crashes,
                last_exit,
                next_start,
            } = &mut state.link
            else {
                return;
            };
            if *current != generation || child.is_none() {
                return;
            }
            *child = None;
            *last_exit = Some(status.clone());
            if started_at.elapsed() > Duration::from_secs(60) {
                *crashes = 0;
            }
            *crashes += 1;
            let delay = self.settings.backoff(*crashes);
            *next_start = (!delay.is_zero()).then(|| Instant::now() + delay);
            let crashes = *crashes;
            let failed: Vec<Pending> = state.pending.drain().map(|(_, p)| p).collect();
            if !self.is_closed() {
                tracing::error!(
                    session = %self.id,
                    %status,
                    crashes,
                    failed_requests = failed.len(),
                    next_restart_ms = delay.as_millis() as u64,
                    "the upstream MCP server exited"
                );
            }
            failed
        };
        for pending in failed {
            let _ = pending.reply.send(Err(ProxyError::UpstreamExited {
                status: status.clone(),
            }));
        }
    }

    /// Ends the session: fails what is pending, stops the child or ends the
    /// upstream HTTP session, closes the streams.
    pub async fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let (pending, http, child) = {
            let mut state = self.lock();
            let pending: Vec<Pending> = state.pending.drain().map(|(_, p)| p).collect();
            state.get_stream = None;
            let (http, child) = match &mut state.link {
                Link::Stdio { child, .. } => (None, child.take()),
                Link::Http { upstream, .. } => (Some(upstream.clone()), None),
            };
            (pending, http, child)
        };
        for p in pending {
            let _ = p.reply.send(Err(ProxyError::SessionClosed));
        }
        if let Some(child) = child {
            child.stop_and_wait(Duration::from_secs(5)).await;
        }
        if let Some(http) = http {
            http.close().await;
        }
        tracing::debug!(session = %self.id, "session closed");
    }

    /// Sends `notifications/cancelled` for a request the client gave up on.
    fn cancel_upstream(self: &Arc<Self>, id: RequestId, reason: &'static str) {
        let session = self.clone();
        tokio::spawn(async move {
            let params = format!(
                "{{\"requestId\":{},\"reason\":{}}}",
                id.as_json(),
                serde_json::to_string(reason).unwrap_or_default()
            );
            let Ok(params) = RawValue::from_string(params) else {
                return;
            };
            let message = Message::notification(methods::CANCELLED, Some(&params));
            let _ = session.send_upstream(&message, None).await;
        });
    }
}

/// Removes a pending request that ends without an answer (timeout, client
/// gone) and tells the upstream to stop working on it.
struct PendingGuard {
    session: Arc<Session>,
    id: RequestId,
    sent: bool,
    done: bool,
    abort: Option<AbortHandle>,
    reason: &'static str,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let removed = self.session.lock().pending.remove(&self.id).is_some();
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
        if removed && self.sent && !self.session.is_closed() {
            tracing::debug!(session = %self.session.id, id = %self.id, reason = self.reason, "cancelling upstream request");
            self.session.cancel_upstream(self.id.clone(), self.reason);
        }
    }
}

async fn route_events(session: Weak<Session>, mut events: mpsc::Receiver<UpstreamEvent>) {
    while let Some(event) = events.recv().await {
        let Some(session) = session.upgrade() else {
            return;
        };
        session.route(event).await;
    }
}

/// The `_meta.progressToken` of a request, or the `progressToken` of a
/// progress notification, as raw JSON text.
fn progress_token(message: &Message) -> Option<Box<str>> {
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "_meta")]
        meta: Option<Meta<'a>>,
        #[serde(borrow, rename = "progressToken")]
        progress_token: Option<&'a RawValue>,
    }
    let params = message.params()?.get();
    if !params.contains("progressToken") {
        return None;
    }
    let parsed: Params<'_> = serde_json::from_str(params).ok()?;
    parsed
        .progress_token
        .or(parsed.meta.and_then(|m| m.progress_token))
        .map(|t| t.get().into())
}

fn cancelled_request_id(message: &Message) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a RawValue,
    }
    let params: Params<'_> = serde_json::from_str(message.params()?.get()).ok()?;
    RequestId::from_json_text(params.request_id.get()).ok()
}
