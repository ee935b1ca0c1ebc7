//! A fake Stripe API for the integration tests, served over real HTTP on
//! `127.0.0.1` (an ephemeral port) from the test's tokio runtime.
//!
//! It answers the endpoints `mcp-meter` calls through the typed
//! `async-stripe` client, with bodies complete enough for its parser
//! (every non-`Option` field of each type is present):
//!
//! * `POST /v1/customers`, `GET /v1/customers/{id}` (`expand[]=subscriptions`
//!   embeds the subscriptions given to [`FakeStripe::add_subscription`]);
//! * `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions` (filters
//!   `customer`, `status`, `subscription`, `created` (a Unix time, or
//!   `created[gt|gte|lt|lte]`); paging `limit`, `starting_after`,
//!   `ending_before`), `GET /v1/checkout/sessions/{id}`;
//! * `POST /v1/billing/meter_events` (an `identifier` seen before is
//!   rejected, like Stripe: `400 invalid_request_error`,
//!   `Stripe-Should-Retry: false`, and never counted twice);
//! * `POST /v1/invoiceitems`, `GET /v1/invoiceitems[?customer=…]`,
//!   `GET /v1/invoiceitems/{id}`;
//! * `GET /v1/subscriptions/{id}` (what the test registered).
//!
//! Anything else is a Stripe-shaped `404`. Requests without an
//! `Authorization` header get `401`. A `POST` with an `Idempotency-Key` seen
//! before replays the first answer (status and body, plus
//! `Idempotent-Replayed: true`) without a second effect, or answers
//! `400 idempotency_error` when the endpoint or parameters differ, or
//! `409 idempotency_key_in_use` while the first is still running.
//!
//! Every request is recorded ([`FakeStripe::requests`]) and faults can be
//! queued at any time ([`FakeStripe::push_fault`]). Each effect runs on its
//! own task, so a request whose client gave up (say, during
//! [`Fault::Slow`]) still completes, as it would at Stripe.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Stripe's window for a meter event's `timestamp`: 35 days back …
const METER_PAST: i64 = 35 * 86_400;
/// … to 5 minutes ahead.
const METER_FUTURE: i64 = 300;
/// How long a Checkout Session stays open by default (24 hours).
const SESSION_LIFETIME: i64 = 86_400;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A fault injected into the next request that matches its path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with a Stripe error body (`429` is
    /// `rate_limit`, `409` `lock_timeout`, `5xx` `api_error`), with no effect
    /// and nothing stored for idempotent replay.
    Status(u16),
    /// Wait this long, then handle the request normally. The effect happens
    /// even when the client stops waiting.
    Slow(Duration),
    /// Close the connection without an answer, with no effect.
    Drop,
    /// Perform the effect (and store its real answer for idempotent
    /// replay, as Stripe would have), then answer this status instead: an
    /// answer lost on the way back. A retry with the same idempotency key
    /// gets the stored answer; one with a new key but the same meter event
    /// identifier gets the duplicate rejection.
    StatusAfterEffect(u16),
    /// Perform the effect (stored for replay like
    /// [`Fault::StatusAfterEffect`]), then close the connection without an
    /// answer.
    DropAfterEffect,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, e.g. `/v1/billing/meter_events` (no query).
    pub path: String,
    /// The decoded query parameters, then the decoded form body, in the order
    /// sent, with nested keys spelled as Stripe does (`metadata[k]`,
    /// `line_items[0][price]`). Empty when the request could not be parsed.
    pub params: Vec<(String, String)>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The status answered; `None` while the request is still being handled
    /// or when the connection was closed without an answer.
    pub status: Option<u16>,
    /// Whether the answer was an idempotent replay.
    pub replayed: bool,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
}

impl RecordedRequest {
    /// The last value of parameter `name` (e.g. `"payload[value]"`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A meter event the fake accepted (duplicates are never kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMeterEvent {
    /// `event_name`.
    pub event_name: String,
    /// `payload[stripe_customer_id]`.
    pub customer: String,
    /// `payload[value]`.
    pub value: i64,
    /// `identifier` (generated when the request had none).
    pub identifier: String,
    /// `timestamp` in Unix seconds (the fake's "now" when not sent).
    pub timestamp: i64,
    /// When the fake accepted it, in Unix seconds.
    pub created: i64,
}

/// A running fake Stripe API. Cheap to clone; the server stops when the last
/// clone is dropped (or when the runtime ends).
#[derive(Clone)]
pub struct FakeStripe {
    state: Shared,
    server: Arc<Server>,
}

impl FakeStripe {
    /// Starts the fake on `127.0.0.1:0` on the current tokio runtime.
    pub async fn start() -> FakeStripe {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Stripe API");
        let port = listener.local_addr().expect("fake Stripe address").port();
        let state: Shared = Arc::new(Mutex::new(Books::default()));
        let app = Router::new().fallback(entry).with_state(state.clone());
        let task = tokio::spawn(async move {
            let make = app.into_make_service_with_connect_info::<Conn>();
            let _ = axum::serve(KillableListener(listener), make).await;
        });
        FakeStripe {
            state,
            server: Arc::new(Server { port, task }),
        }
    }

    /// `http://127.0.0.1:PORT/`: what `stripe::ClientBuilder::url` takes.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.server.port)
    }

    /// A typed client pointed at the fake (secret `sk_test_fake`, a 2 second
    /// per-attempt timeout, the default `RequestStrategy::Once`).
    pub fn client(&self) -> stripe::Client {
        stripe::ClientBuilder::new("sk_test_fake")
            .url(self.base_url())
            .timeout(Duration::from_secs(2))
            .build()
            .expect("a Stripe client for the fake")
    }

    /// Queues `fault` for the next request whose path starts with
    /// `path_prefix` (any request when `None`), e.g.
    /// `Some("/v1/billing/meter_events")`. Faults are consumed first in,
    /// first out, one per matching request.
    pub fn push_fault(&self, path_prefix: Option<&str>, fault: Fault) {
        self.books()
            .faults
            .push_back((path_prefix.map(str::to_owned), fault));
    }

    /// The number of queued faults not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.books().faults.len()
    }

    /// Forgets every queued fault.
    pub fn clear_faults(&self) {
        self.books().faults.clear();
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.books().requests.clone()
    }

    /// The requests to `path` (exact, no query) with `method`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.books()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    /// The accepted meter events, oldest first.
    pub fn meter_events(&self) -> Vec<FakeMeterEvent> {
        self.books().meter_events.clone()
    }

    /// The sum of the accepted `event_name` events of `customer`.
    pub fn meter_total(&self, customer: &str, event_name: &str) -> i64 {
        self.books()
            .meter_events
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name)
            .map(|e| e.value)
            .sum()
    }

    /// The customers as the API shows them, oldest first (a deleted one is
    /// `{"id": …, "object": "customer", "deleted": true}`).
    pub fn customers(&self) -> Vec<Value> {
        self.books().customers.clone()
    }

    /// Adds a customer with this id (as if created earlier in the
    /// Dashboard), for code that finds a Stripe customer id already stored.
    pub fn add_customer(&self, id: &str, email: Option<&str>) -> Value {
        let mut books = self.books();
        let now = books.now();
        let customer = customer_json(id, now, email, None, None, None, Map::new());
        books.customers.push(customer.clone());
        customer
    }

    /// Marks a customer deleted: retrieving it then answers
    /// `{"id", "object": "customer", "deleted": true}`, as Stripe does.
    pub fn delete_customer(&self, id: &str) {
        let mut books = self.books();
        let customer = books
            .customers
            .iter_mut()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("the fake Stripe has no customer {id}"));
        *customer = json!({"id": id, "object": "customer", "deleted": true});
    }

    /// The Checkout Sessions as the API shows them, oldest first, each with a
    /// `line_items` array of the line items as sent (`quantity` a number).
    pub fn checkout_sessions(&self) -> Vec<Value> {
        self.books()
            .sessions
            .iter()
            .map(|s| {
                let mut v = s.object.clone();
                v["line_items"] = Value::Array(s.line_items.clone());
                v
            })
            .collect()
    }

    /// Completes a Checkout Session: `status` `complete`, `payment_status`
    /// `paid` (`no_payment_required` in `setup` mode). Panics on an unknown
    /// id.
    pub fn complete_checkout_session(&self, id: &str) {
        let mut books = self.books();
        let session = books.session_mut(id);
        let paid = if session["mode"] == "setup" {
            "no_payment_required"
        } else {
            "paid"
        };
        session["status"] = json!("complete");
        session["payment_status"] = json!(paid);
    }

    /// Overwrites top-level fields of a Checkout Session (e.g.
    /// `{"subscription": "sub_1", "amount_total": 500}`). Panics on an
    /// unknown id.
    pub fn update_checkout_session(&self, id: &str, fields: Value) {
        let mut books = self.books();
        let session = books.session_mut(id);
        if let Value::Object(fields) = fields {
            for (k, v) in fields {
                session[k] = v;
            }
        }
    }

    /// The invoice items as the API shows them, oldest first.
    pub fn invoice_items(&self) -> Vec<Value> {
        self.books().invoice_items.clone()
    }

    /// Registers a subscription object (its `id` and `customer` fields are
    /// used), answered by `GET /v1/subscriptions/{id}` and embedded in a
    /// customer retrieved with `expand[]=subscriptions`. A later one with
    /// the same id replaces it. [`FakeStripe::subscription_json`] builds one
    /// the typed client can parse.
    pub fn add_subscription(&self, value: Value) {
        let mut books = self.books();
        books.subscriptions.retain(|s| s["id"] != value["id"]);
        books.subscriptions.push(value);
    }

    /// A minimal subscription with every field `stripe_shared::Subscription`
    /// requires: one item at `price` (monthly, licensed, usd), `status`
    /// e.g. `"active"`, the current period starting now.
    pub fn subscription_json(id: &str, customer: &str, price: &str, status: &str) -> Value {
        let now = unix_now();
        let end = now + 30 * 86_400;
        let plan = json!({
            "id": price, "object": "plan", "active": true, "amount": 1000,
            "amount_decimal": "1000", "billing_scheme": "per_unit", "created": now,
            "currency": "usd", "interval": "month", "interval_count": 1,
            "livemode": false, "metadata": {}, "product": "prod_fake",
            "usage_type": "licensed",
        });
        let price_obj = json!({
            "id": price, "object": "price", "active": true, "billing_scheme": "per_unit",
            "created": now, "currency": "usd", "livemode": false, "metadata": {},
            "product": "prod_fake", "type": "recurring", "unit_amount": 1000,
            "unit_amount_decimal": "1000",
            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        });
        json!({
            "id": id,
            "object": "subscription",
            "automatic_tax": {"enabled": false},
            "billing_cycle_anchor": now,
            "billing_mode": {"type": "classic"},
            "billing_schedules": [],
            "cancel_at": null,
            "cancel_at_period_end": false,
            "canceled_at": null,
            "collection_method": "charge_automatically",
            "created": now,
            "currency": "usd",
            "customer": customer,
            "discounts": [],
            "ended_at": null,
            "invoice_settings": {"issuer": {"type": "self"}},
            "items": {
                "object": "list",
                "data": [{
                    "id": format!("si_{id}"),
                    "object": "subscription_item",
                    "created": now,
                    "current_period_start": now,
                    "current_period_end": end,
                    "discounts": [],
                    "metadata": {},
                    "plan": plan,
                    "price": price_obj,
                    "quantity": 1,
                    "subscription": id,
                    "tax_rates": [],
                }],
                "has_more": false,
                "url": format!("/v1/subscription_items?subscription={id}"),
            },
            "livemode": false,
            "metadata": {},
            "start_date": now,
            "status": status,
        })
    }

    /// Sets the fake's clock (Unix seconds) used for `created` and for the
    /// meter event timestamp window; `None` follows the real clock again.
    pub fn set_now(&self, unix_seconds: Option<i64>) {
        self.books().clock = unix_seconds;
    }

    /// The fake's clock, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.books().now()
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        lock(&self.state)
    }
}

// ---------------------------------------------------------------------------
// The server: a listener whose connections a handler can abort
// ---------------------------------------------------------------------------

/// Aborts the accept loop when the last [`FakeStripe`] clone goes.
struct Server {
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP listener whose connections carry a kill switch, so a handler can
/// make hyper drop its connection without writing an answer.
struct KillableListener(TcpListener);

/// The per-connection kill switch, given to handlers as connect info.
#[derive(Clone, Debug)]
struct Conn {
    killed: Arc<AtomicBool>,
}

impl Conn {
    /// From now on every read and write on the connection fails, so hyper
    /// closes it: the answer being written is never sent.
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (KillableIo, Conn) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let killed = Arc::new(AtomicBool::new(false));
                    let io = KillableIo {
                        stream,
                        killed: killed.clone(),
                    };
                    return (io, Conn { killed });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        self.0.local_addr()?;
        Ok(Conn {
            killed: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP stream that fails every operation once its connection is killed.
struct KillableIo {
    stream: TcpStream,
    killed: Arc<AtomicBool>,
}

impl KillableIo {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the fake Stripe",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

type Shared = Arc<Mutex<Books>>;

fn lock(state: &Shared) -> MutexGuard<'_, Books> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the fake knows.
#[derive(Default)]
struct Books {
    counters: HashMap<&'static str, u64>,
    customers: Vec<Value>,
    sessions: Vec<Session>,
    meter_events: Vec<FakeMeterEvent>,
    invoice_items: Vec<Value>,
    subscriptions: Vec<Value>,
    idempotency: HashMap<String, Idempotent>,
    faults: VecDeque<(Option<String>, Fault)>,
    requests: Vec<RecordedRequest>,
    clock: Option<i64>,
}

struct Session {
    /// The API object (without `line_items`).
    object: Value,
    /// The line items as sent.
    line_items: Vec<Value>,
}

/// What an idempotency key is bound to.
enum Idempotent {
    /// The first request with the key is still running.
    InFlight(String),
    /// Its answer, replayed to later requests with the same fingerprint.
    Done(String, Reply),
}

impl Books {
    fn now(&self) -> i64 {
        self.clock.unwrap_or_else(unix_now)
    }

    /// The next id with this prefix: `cus_fake_1`, `cus_fake_2`, …
    fn next_id(&mut self, prefix: &'static str) -> String {
        let n = self.counters.entry(prefix).or_insert(0);
        *n += 1;
        format!("{prefix}_fake_{n}")
    }

    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let at = self.faults.iter().position(|(prefix, _)| {
            prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
        })?;
        self.faults.remove(at).map(|(_, fault)| fault)
    }

    fn customer(&self, id: &str) -> Option<&Value> {
        self.customers.iter().find(|c| c["id"] == id)
    }

    /// Fails like Stripe when a `customer` parameter names no live customer.
    fn live_customer(&self, id: &str) -> Result<(), ApiError> {
        match self.customer(id) {
            Some(c) if c["deleted"] != true => Ok(()),
            _ => Err(ApiError::no_such("customer", id, "customer", 400)),
        }
    }

    fn session_mut(&mut self, id: &str) -> &mut Value {
        &mut self
            .sessions
            .iter_mut()
            .find(|s| s.object["id"] == id)
            .unwrap_or_else(|| panic!("the fake Stripe has no Checkout Session {id}"))
            .object
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Answers and errors
// ---------------------------------------------------------------------------

/// An answer, as stored for idempotent replay.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    should_retry: Option<bool>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            should_retry: None,
        }
    }

    fn into_response(self, request_id: &str, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("request-id", id);
        }
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        if let Some(retry) = self.should_retry {
            let value = HeaderValue::from_static(if retry { "true" } else { "false" });
            headers.insert("stripe-should-retry", value);
        }
        response
    }
}

/// A Stripe error: `{"error": {"type", "message", "code"?, "param"?}}`.
struct ApiError {
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
    should_retry: Option<bool>,
    /// Parameter validation errors are not stored under an idempotency key
    /// (Stripe saves a result only once the endpoint started executing).
    validation: bool,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            should_retry: None,
            validation: false,
        }
    }

    fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("parameter_invalid"),
            param: Some(param.to_owned()),
            validation: true,
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }

    fn invalid_integer(param: &str, value: &str) -> ApiError {
        ApiError {
            code: Some("parameter_invalid_integer"),
            ..ApiError::invalid(param, format!("Invalid integer: {value}"))
        }
    }

    fn missing(param: &str) -> ApiError {
        ApiError {
            code: Some("parameter_missing"),
            ..ApiError::invalid(param, format!("Missing required param: {param}."))
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            validation: true,
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }

    fn no_such(object: &str, id: &str, param: &str, status: u16) -> ApiError {
        ApiError {
            code: Some("resource_missing"),
            param: Some(param.to_owned()),
            ..ApiError::new(
                status,
                "invalid_request_error",
                format!("No such {object}: '{id}'"),
            )
        }
    }

    fn unrecognized(method: &Method, path: &str) -> ApiError {
        ApiError::new(
            404,
            "invalid_request_error",
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
        )
    }

    /// The answer to an injected [`Fault::Status`].
    fn injected(status: u16) -> ApiError {
        let (kind, code, message) = match status {
            429 => (
                "invalid_request_error",
                Some("rate_limit"),
                "Request rate limit exceeded. Learn more about rate limits here \
                 https://stripe.com/docs/rate-limits.",
            ),
            409 => (
                "invalid_request_error",
                Some("lock_timeout"),
                "This object cannot be accessed right now because another API request or Stripe \
                 process is currently accessing it.",
            ),
            s if s >= 500 => (
                "api_error",
                None,
                "An unknown error occurred (injected by the fake Stripe).",
            ),
            _ => (
                "invalid_request_error",
                None,
                "An error injected by the fake Stripe.",
            ),
        };
        ApiError {
            code,
            should_retry: Some(status == 409 || status == 429 || status >= 500),
            ..ApiError::new(status, kind, message)
        }
    }

    fn reply(&self) -> Reply {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            error["code"] = json!(code);
            error["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{code}"));
        }
        if let Some(param) = &self.param {
            error["param"] = json!(param);
        }
        Reply {
            status: self.status,
            body: json!({ "error": error }).to_string(),
            should_retry: self.should_retry,
        }
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

/// What the handler does with a request once handled.
enum Outcome {
    Answer(Reply, bool),
    Drop,
}

struct Incoming {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// The one axum handler: hands the request to its own task (so its effect
/// completes even if the client goes away) and applies the outcome.
async fn entry(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
    };
    let (index, outcome) = match tokio::spawn(process(state, incoming)).await {
        Ok(done) => done,
        Err(_) => (
            0,
            Outcome::Answer(
                ApiError::new(500, "api_error", "fake Stripe task failed").reply(),
                false,
            ),
        ),
    };
    match outcome {
        Outcome::Answer(reply, replayed) => {
            reply.into_response(&format!("req_fake_{}", index + 1), replayed)
        }
        Outcome::Drop => {
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn process(state: Shared, req: Incoming) -> (usize, Outcome) {
    let parsed = parse_params(&req);
    let key = idempotency_key(&req.headers);
    let (index, fault) = {
        let mut books = lock(&state);
        let index = books.requests.len();
        let fault = books.take_fault(&req.path);
        books.requests.push(RecordedRequest {
            method: req.method.to_string(),
            path: req.path.clone(),
            params: parsed
                .as_ref()
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.display.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            idempotency_key: key.clone().ok().flatten(),
            status: None,
            replayed: false,
            fault: fault.clone(),
        });
        (index, fault)
    };
    let outcome = match fault {
        Some(Fault::Status(status)) => Outcome::Answer(ApiError::injected(status).reply(), false),
        Some(Fault::Drop) => Outcome::Drop,
        Some(Fault::StatusAfterEffect(status)) => {
            handle(&state, &req, parsed, key, None).await;
            Outcome::Answer(ApiError::injected(status).reply(), false)
        }
        Some(Fault::DropAfterEffect) => {
            handle(&state, &req, parsed, key, None).await;
            Outcome::Drop
        }
        Some(Fault::Slow(delay)) => {
            let (reply, replayed) = handle(&state, &req, parsed, key, Some(delay)).await;
            Outcome::Answer(reply, replayed)
        }
        None => {
            let (reply, replayed) = handle(&state, &req, parsed, key, None).await;
            Outcome::Answer(reply, replayed)
        }
    };
    let mut books = lock(&state);
    if let Some(recorded) = books.requests.get_mut(index) {
        match &outcome {
            Outcome::Answer(reply, replayed) => {
                recorded.status = Some(reply.status);
                recorded.replayed = *replayed;
            }
            Outcome::Drop => recorded.status = None,
        }
    }
    (index, outcome)
}

/// Authentication, idempotency, the optional delay, then the endpoint.
/// Returns the answer and whether it was a replay.
async fn handle(
    state: &Shared,
    req: &Incoming,
    parsed: Result<Vec<(Key, String)>, String>,
    key: Result<Option<String>, String>,
    delay: Option<Duration>,
) -> (Reply, bool) {
    if !authorized(&req.headers) {
        let error = ApiError::new(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY').",
        );
        return (error.reply(), false);
    }
    let params = match parsed {
        Ok(params) => params,
        Err(message) => return (ApiError::bad_request(message).reply(), false),
    };
    let key = match key {
        Ok(key) if req.method == Method::POST => key,
        Ok(_) => None,
        Err(message) => return (ApiError::bad_request(message).reply(), false),
    };
    let fingerprint = fingerprint(&req.path, &params);
    if let Some(key) = &key {
        let mut books = lock(state);
        match books.idempotency.get(key) {
            Some(Idempotent::Done(seen, reply)) if *seen == fingerprint => {
                return (reply.clone(), true);
            }
            Some(Idempotent::Done(seen, _) | Idempotent::InFlight(seen))
                if *seen != fingerprint =>
            {
                let error = ApiError::new(
                    400,
                    "idempotency_error",
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with. Try using a key other than '{key}' if you \
                         meant to execute a different request."
                    ),
                );
                return (error.reply(), false);
            }
            Some(_) => {
                let error = ApiError {
                    code: Some("idempotency_key_in_use"),
                    should_retry: Some(true),
                    ..ApiError::new(
                        409,
                        "invalid_request_error",
                        "There is currently another in-progress request using this \
                         Idempotent Key (that probably means you submitted twice, and the \
                         other request is still going through). Please try again later.",
                    )
                };
                return (error.reply(), false);
            }
            None => {
                books
                    .idempotency
                    .insert(key.clone(), Idempotent::InFlight(fingerprint.clone()));
            }
        }
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut books = lock(state);
    let now = books.now();
    let tree = param_tree(&params);
    let (reply, keep) = match tree.and_then(|p| route(&mut books, &req.method, &req.path, &p, now))
    {
        Ok((status, body)) => (Reply::json(status, &body), true),
        Err(error) => (error.reply(), !error.validation),
    };
    if let Some(key) = key {
        if keep {
            books
                .idempotency
                .insert(key, Idempotent::Done(fingerprint, reply.clone()));
        } else {
            books.idempotency.remove(&key);
        }
    }
    (reply, false)
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim();
            (v.starts_with("Bearer ") || v.starts_with("Basic ")) && v.len() > "Bearer ".len()
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| "Invalid Idempotency-Key header: not ASCII.".to_owned())?;
    if key.is_empty() || key.len() > 255 {
        return Err("Invalid Idempotency-Key header: must be 1 to 255 characters.".to_owned());
    }
    Ok(Some(key.to_owned()))
}

/// What an idempotent replay must match: the endpoint and the parameters
/// (in any order, as Stripe compares them by value).
fn fingerprint(path: &str, params: &[(Key, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.display.as_str(), v.as_str()))
        .collect();
    sorted.sort();
    format!("{path}?{sorted:?}")
}

/// The endpoints. Runs under the lock, so each effect is atomic.
fn route(
    books: &mut Books,
    method: &Method,
    path: &str,
    p: &Params,
    now: i64,
) -> Result<(u16, Value), ApiError> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::unrecognized(method, path));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    match segments.as_slice() {
        ["customers"] if post => create_customer(books, p, now),
        ["customers", id] if get => get_customer(books, id, p),
        ["checkout", "sessions"] if post => create_session(books, p, now),
        ["checkout", "sessions"] if get => list_sessions(books, p),
        ["checkout", "sessions", id] if get => books
            .sessions
            .iter()
            .find(|s| s.object["id"] == *id)
            .map(|s| (200, s.object.clone()))
            .ok_or_else(|| ApiError::no_such("checkout.session", id, "session", 404)),
        ["billing", "meter_events"] if post => create_meter_event(books, p, now),
        ["invoiceitems"] if post => create_invoice_item(books, p, now),
        ["invoiceitems"] if get => list_invoice_items(books, p),
        ["invoiceitems", id] if get => books
            .invoice_items
            .iter()
            .find(|i| i["id"] == *id)
            .map(|i| (200, i.clone()))
            .ok_or_else(|| ApiError::no_such("invoiceitem", id, "id", 404)),
        ["subscriptions", id] if get => books
            .subscriptions
            .iter()
            .find(|s| s["id"] == *id)
            .map(|s| (200, s.clone()))
            .ok_or_else(|| ApiError::no_such("subscription", id, "id", 404)),
        _ => Err(ApiError::unrecognized(method, path)),
    }
}

// ---------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------

fn customer_json(
    id: &str,
    now: i64,
    email: Option<&str>,
    name: Option<&str>,
    description: Option<&str>,
    phone: Option<&str>,
    metadata: Map<String, Value>,
) -> Value {
    json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": now,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": description,
        "discount": null,
        "email": email,
        "invoice_prefix": id.trim_start_matches("cus_").to_uppercase(),
        "livemode": false,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null,
    })
}

fn create_customer(books: &mut Books, p: &Params, now: i64) -> Result<(u16, Value), ApiError> {
    let metadata = p.metadata()?;
    let id = books.next_id("cus");
    let customer = customer_json(
        &id,
        now,
        p.opt_str("email")?,
        p.opt_str("name")?,
        p.opt_str("description")?,
        p.opt_str("phone")?,
        metadata,
    );
    books.customers.push(customer.clone());
    Ok((200, customer))
}

fn get_customer(books: &Books, id: &str, p: &Params) -> Result<(u16, Value), ApiError> {
    let mut customer = books
        .customer(id)
        .cloned()
        .ok_or_else(|| ApiError::no_such("customer", id, "id", 404))?;
    if p.expands("subscriptions")? && customer["deleted"] != true {
        let data: Vec<Value> = books
            .subscriptions
            .iter()
            .filter(|s| s["customer"] == id)
            .cloned()
            .collect();
        customer["subscriptions"] = json!({
            "object": "list",
            "data": data,
            "has_more": false,
            "url": format!("/v1/customers/{id}/subscriptions"),
        });
    }
    Ok((200, customer))
}

fn create_session(books: &mut Books, p: &Params, now: i64) -> Result<(u16, Value), ApiError> {
    let mode = p.required("mode")?;
    if !matches!(mode, "payment" | "setup" | "subscription") {
        return Err(ApiError::invalid(
            "mode",
            format!("Invalid mode: must be one of payment, setup, or subscription (got {mode:?})"),
        ));
    }
    let customer = p.opt_str("customer")?;
    let customer_email = p.opt_str("customer_email")?;
    if customer.is_some() && customer_email.is_some() {
        return Err(ApiError::bad_request(
            "You may only specify one of these parameters: customer, customer_email.",
        ));
    }
    let client_reference_id = p.opt_str("client_reference_id")?;
    if client_reference_id.is_some_and(|c| c.chars().count() > 200) {
        return Err(ApiError::invalid(
            "client_reference_id",
            "client_reference_id must be at most 200 characters.",
        ));
    }
    let line_items = session_line_items(p, mode)?;
    let expires_at = match p.int("expires_at")? {
        None => now + SESSION_LIFETIME,
        Some(at) if (now + 1_800..=now + SESSION_LIFETIME).contains(&at) => at,
        Some(_) => {
            return Err(ApiError::invalid(
                "expires_at",
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
            ));
        }
    };
    let metadata = p.metadata()?;
    let ui_mode = p.opt_str("ui_mode")?.unwrap_or("hosted_page");
    if let Some(customer) = customer {
        books.live_customer(customer)?;
    }
    let id = books.next_id("cs");
    let url =
        (ui_mode == "hosted_page").then(|| format!("https://checkout.stripe.test/c/pay/{id}"));
    let customer_creation = (customer.is_none() && mode != "subscription").then_some("if_required");
    let payment_status = if mode == "setup" {
        "no_payment_required"
    } else {
        "unpaid"
    };
    // Two halves: one `json!` this big exceeds the macro recursion limit.
    let mut session = json!({
        "id": id,
        "object": "checkout.session",
        "after_expiration": null,
        "allow_promotion_codes": null,
        "amount_subtotal": null,
        "amount_total": null,
        "automatic_tax": {"enabled": false, "liability": null, "status": null},
        "billing_address_collection": null,
        "cancel_url": p.opt_str("cancel_url")?,
        "client_reference_id": client_reference_id,
        "client_secret": null,
        "consent": null,
        "consent_collection": null,
        "created": now,
        "currency": null,
        "custom_fields": [],
        "custom_text": {
            "after_submit": null, "shipping_address": null, "submit": null,
            "terms_of_service_acceptance": null,
        },
    });
    let rest = json!({
        "customer": customer,
        "customer_creation": customer_creation,
        "customer_details": null,
        "customer_email": customer_email,
        "expires_at": expires_at,
        "invoice": null,
        "livemode": false,
        "locale": null,
        "metadata": metadata,
        "mode": mode,
        "payment_intent": null,
        "payment_link": null,
        "payment_method_collection": "always",
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "recovered_from": null,
        "setup_intent": null,
        "shipping_address_collection": null,
        "shipping_cost": null,
        "shipping_options": [],
        "status": "open",
        "submit_type": null,
        "subscription": null,
        "success_url": p.opt_str("success_url")?,
        "total_details": null,
        "ui_mode": ui_mode,
        "url": url,
    });
    if let (Value::Object(session), Value::Object(rest)) = (&mut session, rest) {
        session.extend(rest);
    }
    books.sessions.push(Session {
        object: session.clone(),
        line_items,
    });
    Ok((200, session))
}

/// `line_items[i][…]`: required in `payment` and `subscription` mode, each
/// with a `price` or `price_data`; `quantity` (optional: metered prices
/// have none) becomes a number.
fn session_line_items(p: &Params, mode: &str) -> Result<Vec<Value>, ApiError> {
    let items = match p.get("line_items") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(ApiError::invalid("line_items", "Invalid array")),
    };
    if items.is_empty() && mode != "setup" {
        return Err(ApiError::missing("line_items"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(mut item) = item else {
                return Err(ApiError::invalid(
                    &format!("line_items[{i}]"),
                    "Invalid object",
                ));
            };
            if !item.contains_key("price") && !item.contains_key("price_data") {
                return Err(ApiError {
                    code: Some("parameter_missing"),
                    ..ApiError::invalid(
                        &format!("line_items[{i}][price]"),
                        format!(
                            "You must specify either `price` or `price_data` in line_items[{i}]."
                        ),
                    )
                });
            }
            if let Some(quantity) = item.get("quantity") {
                let name = format!("line_items[{i}][quantity]");
                let text = quantity.as_str().unwrap_or_default();
                let n: u64 = text
                    .parse()
                    .map_err(|_| ApiError::invalid_integer(&name, text))?;
                item.insert("quantity".into(), json!(n));
            }
            Ok(Value::Object(item))
        })
        .collect()
}

fn list_sessions(books: &Books, p: &Params) -> Result<(u16, Value), ApiError> {
    let customer = p.opt_str("customer")?;
    let status = p.opt_str("status")?;
    if let Some(status) = status
        && !matches!(status, "open" | "complete" | "expired")
    {
        return Err(ApiError::invalid(
            "status",
            format!("Invalid status: must be one of open, complete, or expired (got {status:?})"),
        ));
    }
    let subscription = p.opt_str("subscription")?;
    let created = created_range(p)?;
    let matching: Vec<Value> = books
        .sessions
        .iter()
        .rev()
        .map(|s| &s.object)
        .filter(|s| customer.is_none_or(|c| s["customer"] == c))
        .filter(|s| status.is_none_or(|st| s["status"] == st))
        .filter(|s| subscription.is_none_or(|sub| s["subscription"] == sub))
        .filter(|s| s["created"].as_i64().is_some_and(|at| created.contains(at)))
        .cloned()
        .collect();
    Ok((200, paginate(matching, p, "/v1/checkout/sessions")?))
}

/// A `created` filter: bounds on a Unix time, each inclusive.
struct CreatedRange {
    from: i64,
    to: i64,
}

impl CreatedRange {
    fn contains(&self, at: i64) -> bool {
        (self.from..=self.to).contains(&at)
    }
}

/// `created=T` (exactly), or any of `created[gt]`, `created[gte]`,
/// `created[lt]`, `created[lte]`.
fn created_range(p: &Params) -> Result<CreatedRange, ApiError> {
    let mut range = CreatedRange {
        from: i64::MIN,
        to: i64::MAX,
    };
    let int = |name: &str, text: &str| {
        text.parse::<i64>()
            .map_err(|_| ApiError::invalid_integer(name, text))
    };
    match p.get("created") {
        None => {}
        Some(Value::String(text)) => {
            let at = int("created", text)?;
            range = CreatedRange { from: at, to: at };
        }
        Some(Value::Object(bounds)) => {
            for (op, value) in bounds {
                let name = format!("created[{op}]");
                let at = int(&name, value.as_str().unwrap_or_default())?;
                match op.as_str() {
                    "gt" => range.from = range.from.max(at.saturating_add(1)),
                    "gte" => range.from = range.from.max(at),
                    "lt" => range.to = range.to.min(at.saturating_sub(1)),
                    "lte" => range.to = range.to.min(at),
                    _ => {
                        return Err(ApiError::invalid(
                            &name,
                            format!("Received unknown parameter: {name}"),
                        ));
                    }
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("created", "Invalid timestamp range")),
    }
    Ok(range)
}

fn create_meter_event(books: &mut Books, p: &Params, now: i64) -> Result<(u16, Value), ApiError> {
    let event_name = p.required("event_name")?.to_owned();
    if event_name.chars().count() > 100 {
        return Err(ApiError::invalid(
            "event_name",
            "event_name must be at most 100 characters.",
        ));
    }
    let payload = match p.get("payload") {
        Some(Value::Object(payload)) => payload.clone(),
        Some(_) => return Err(ApiError::invalid("payload", "Invalid hash")),
        None => return Err(ApiError::missing("payload")),
    };
    if let Some((k, _)) = payload.iter().find(|(_, v)| !v.is_string()) {
        return Err(ApiError::invalid(
            &format!("payload[{k}]"),
            "Invalid string",
        ));
    }
    let customer = match payload.get("stripe_customer_id").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => c.to_owned(),
        _ => return Err(ApiError::missing("payload[stripe_customer_id]")),
    };
    let value = match payload.get("value").and_then(Value::as_str) {
        Some(v) if !v.is_empty() => v.parse::<i64>().map_err(|_| {
            ApiError::invalid(
                "payload[value]",
                format!("Invalid payload value: {v:?} is not a whole number."),
            )
        })?,
        _ => return Err(ApiError::missing("payload[value]")),
    };
    let timestamp = p.int("timestamp")?.unwrap_or(now);
    if !(now - METER_PAST..=now + METER_FUTURE).contains(&timestamp) {
        return Err(ApiError::invalid(
            "timestamp",
            format!(
                "Timestamp {timestamp} must be within the past 35 calendar days or up to 5 \
                 minutes in the future (now is {now}); it is in Unix seconds."
            ),
        ));
    }
    let identifier = match p.opt_str("identifier")? {
        Some(id) if id.chars().count() > 100 => {
            return Err(ApiError::invalid(
                "identifier",
                "identifier must be at most 100 characters.",
            ));
        }
        Some(id) => id.to_owned(),
        None => books.next_id("mev"),
    };
    if books
        .meter_events
        .iter()
        .any(|e| e.identifier == identifier)
    {
        // What Stripe answers (not retryable); the first event stays the only one.
        return Err(ApiError {
            param: Some("identifier".into()),
            should_retry: Some(false),
            ..ApiError::new(
                400,
                "invalid_request_error",
                format!("An event already exists with identifier {identifier}."),
            )
        });
    }
    books.meter_events.push(FakeMeterEvent {
        event_name: event_name.clone(),
        customer,
        value,
        identifier: identifier.clone(),
        timestamp,
        created: now,
    });
    Ok((
        200,
        json!({
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": false,
            "payload": payload,
            "timestamp": timestamp,
        }),
    ))
}

fn create_invoice_item(books: &mut Books, p: &Params, now: i64) -> Result<(u16, Value), ApiError> {
    let customer = p.required("customer")?.to_owned();
    let currency = p.opt_str("currency")?.unwrap_or("usd").to_lowercase();
    let quantity_decimal = match p.opt_str("quantity_decimal")? {
        Some(q) => Some(decimal("quantity_decimal", q)?),
        None => None,
    };
    let quantity = match p.int("quantity")? {
        Some(q) if q < 0 => return Err(ApiError::invalid("quantity", "quantity must be >= 0.")),
        Some(q) => q as f64,
        None => quantity_decimal.unwrap_or(1.0),
    };
    // `amount` is the total; a unit amount is multiplied by the quantity.
    let amount = match (
        p.int("amount")?,
        p.opt_str("unit_amount_decimal")?,
        p.get("price_data"),
    ) {
        (Some(_), Some(_), _) => {
            return Err(ApiError::bad_request(
                "You may only specify one of these parameters: amount, unit_amount_decimal.",
            ));
        }
        (Some(amount), None, _) => amount,
        (None, Some(unit), _) => (decimal("unit_amount_decimal", unit)? * quantity).round() as i64,
        (None, None, Some(Value::Object(data))) => {
            let unit = match (data.get("unit_amount_decimal"), data.get("unit_amount")) {
                (Some(Value::String(u)), _) | (None, Some(Value::String(u))) => {
                    decimal("price_data[unit_amount]", u)?
                }
                _ => return Err(ApiError::missing("price_data[unit_amount]")),
            };
            (unit * quantity).round() as i64
        }
        (None, None, _) => {
            return Err(ApiError {
                code: Some("parameter_missing"),
                ..ApiError::invalid(
                    "amount",
                    "You must specify either `amount`, `unit_amount_decimal`, or `price_data`.",
                )
            });
        }
    };
    let (start, end) = match p.get("period") {
        None => (now, now),
        Some(Value::Object(period)) => {
            let field = |name: &str| -> Result<i64, ApiError> {
                let param = format!("period[{name}]");
                let text = period
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::missing(&param))?;
                text.parse()
                    .map_err(|_| ApiError::invalid_integer(&param, text))
            };
            let (start, end) = (field("start")?, field("end")?);
            if start > end {
                return Err(ApiError::invalid(
                    "period[end]",
                    "period[end] must be >= period[start].",
                ));
            }
            (start, end)
        }
        Some(_) => return Err(ApiError::invalid("period", "Invalid hash")),
    };
    let discountable = p.bool("discountable")?.unwrap_or(amount >= 0);
    let metadata = p.metadata()?;
    let description = p.opt_str("description")?.map(str::to_owned);
    let quantity_text = match p.opt_str("quantity_decimal")? {
        Some(text) => text.to_owned(),
        None => (quantity.round() as u64).to_string(),
    };
    books.live_customer(&customer)?;
    let id = books.next_id("ii");
    let item = json!({
        "id": id,
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": customer,
        "date": now,
        "description": description,
        "discountable": discountable,
        "discounts": [],
        "invoice": null,
        "livemode": false,
        "metadata": metadata,
        "net_amount": amount,
        "parent": null,
        "period": {"start": start, "end": end},
        "pricing": null,
        "proration": false,
        "quantity": quantity.round() as u64,
        "quantity_decimal": quantity_text,
        "tax_rates": [],
        "test_clock": null,
    });
    books.invoice_items.push(item.clone());
    Ok((200, item))
}

fn list_invoice_items(books: &Books, p: &Params) -> Result<(u16, Value), ApiError> {
    let customer = p.opt_str("customer")?;
    let matching: Vec<Value> = books
        .invoice_items
        .iter()
        .rev()
        .filter(|i| customer.is_none_or(|c| i["customer"] == c))
        .cloned()
        .collect();
    Ok((200, paginate(matching, p, "/v1/invoiceitems")?))
}

/// A Stripe list object over `items` (newest first), honouring `limit`
/// (1–100, default 10), `starting_after` and `ending_before`.
fn paginate(items: Vec<Value>, p: &Params, url: &str) -> Result<Value, ApiError> {
    let limit = p.int("limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("Invalid limit: must be between 1 and 100 (got {limit})"),
        ));
    }
    let limit = limit as usize;
    let position = |param: &str, id: &str| {
        items
            .iter()
            .position(|i| i["id"] == id)
            .ok_or_else(|| ApiError::no_such("object", id, param, 400))
    };
    let (page, has_more): (Vec<Value>, bool) =
        match (p.opt_str("starting_after")?, p.opt_str("ending_before")?) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "You may only specify one of these parameters: ending_before, starting_after.",
                ));
            }
            (Some(after), None) => {
                let rest = &items[position("starting_after", after)? + 1..];
                (
                    rest.iter().take(limit).cloned().collect(),
                    rest.len() > limit,
                )
            }
            (None, Some(before)) => {
                let rest = &items[..position("ending_before", before)?];
                let from = rest.len().saturating_sub(limit);
                (rest[from..].to_vec(), from > 0)
            }
            (None, None) => (
                items.iter().take(limit).cloned().collect(),
                items.len() > limit,
            ),
        };
    Ok(json!({"object": "list", "data": page, "has_more": has_more, "url": url}))
}

fn decimal(param: &str, text: &str) -> Result<f64, ApiError> {
    text.parse::<f64>()
        .ok()
        .filter(|d| d.is_finite())
        .ok_or_else(|| ApiError::invalid(param, format!("Invalid decimal: {text}")))
}

// ---------------------------------------------------------------------------
// Form decoding: `a[b][0][c]=v&…` into a JSON tree
// ---------------------------------------------------------------------------

/// A parameter name: its decoded segments (`metadata[k]` is `["metadata",
/// "k"]`) and how it is shown (`metadata[k]`).
struct Key {
    segments: Vec<String>,
    display: String,
}

/// The query string and, unless the body is something else than a form,
/// the form body.
fn parse_params(req: &Incoming) -> Result<Vec<(Key, String)>, String> {
    let mut params = parse_form(req.query.as_deref().unwrap_or_default())?;
    if !req.body.is_empty() {
        let form = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return Err(
                "Invalid request: the body must be application/x-www-form-urlencoded.".into(),
            );
        }
        let body = std::str::from_utf8(&req.body)
            .map_err(|_| "Invalid request: the body is not UTF-8.".to_owned())?;
        params.extend(parse_form(body)?);
    }
    Ok(params)
}

fn parse_form(text: &str) -> Result<Vec<(Key, String)>, String> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((parse_key(raw_key)?, percent_decode(raw_value)?))
        })
        .collect()
}

/// Splits on literal brackets when the client left them unencoded (then a
/// `%5B` inside a segment is part of a metadata key, as `serde_qs` writes
/// it), else on the brackets of the decoded name (as `curl -d` or
/// `form_urlencoded` write them).
fn parse_key(raw: &str) -> Result<Key, String> {
    let invalid = || format!("Invalid parameter name: {raw:?}");
    let segments: Vec<String> = if raw.contains('[') {
        split_key(raw)
            .ok_or_else(invalid)?
            .into_iter()
            .map(percent_decode)
            .collect::<Result<_, _>>()?
    } else {
        let decoded = percent_decode(raw)?;
        split_key(&decoded)
            .ok_or_else(invalid)?
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    if segments[0].is_empty() {
        return Err(invalid());
    }
    let display = segments[1..]
        .iter()
        .fold(segments[0].clone(), |acc, s| format!("{acc}[{s}]"));
    Ok(Key { segments, display })
}

/// `a[b][]` → `["a", "b", ""]`; `None` when the brackets do not close.
fn split_key(key: &str) -> Option<Vec<&str>> {
    let Some(open) = key.find('[') else {
        return Some(vec![key]);
    };
    let mut segments = vec![&key[..open]];
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        segments.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    Some(segments)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .ok_or_else(|| format!("Invalid percent-encoding in {text:?}"))?;
                let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| format!("Invalid request: {text:?} does not decode to UTF-8."))
}

/// The parameters as a tree: objects, arrays (objects whose keys are all
/// indices, except under `metadata` and `payload`) and strings.
struct Params(Map<String, Value>);

fn param_tree(params: &[(Key, String)]) -> Result<Params, ApiError> {
    let mut root = Map::new();
    for (key, value) in params {
        insert(&mut root, &key.segments, value.clone()).map_err(|_| {
            ApiError::invalid(
                &key.display,
                format!(
                    "Invalid parameter {}: it conflicts with another parameter.",
                    key.display
                ),
            )
        })?;
    }
    let root = root
        .into_iter()
        .map(|(k, v)| {
            let keep_map = k == "metadata" || k == "payload";
            (k, arrayify(v, keep_map))
        })
        .collect();
    Ok(Params(root))
}

fn insert(map: &mut Map<String, Value>, segments: &[String], value: String) -> Result<(), ()> {
    let Some((first, rest)) = segments.split_first() else {
        return Err(());
    };
    let key = if first.is_empty() {
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        match map.get(&key) {
            Some(Value::Object(_)) => Err(()),
            _ => {
                map.insert(key, Value::String(value));
                Ok(())
            }
        }
    } else {
        match map.entry(key).or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(child) => insert(child, rest, value),
            _ => Err(()),
        }
    }
}

fn arrayify(value: Value, keep_map: bool) -> Value {
    let Value::Object(map) = value else {
        return value;
    };
    let indices: Option<Vec<usize>> = map.keys().map(|k| k.parse().ok()).collect();
    match indices {
        Some(mut indices) if !keep_map && !map.is_empty() => {
            indices.sort_unstable();
            let mut map = map;
            Value::Array(
                indices
                    .into_iter()
                    .filter_map(|i| map.remove(&i.to_string()))
                    .map(|v| arrayify(v, false))
                    .collect(),
            )
        }
        _ => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let keep = k == "metadata" || k == "payload";
                    (k, arrayify(v, keep))
                })
                .collect(),
        ),
    }
}

impl Params {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A string parameter; `Err` when it was sent as a hash or an array.
    fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("Invalid string: {name}"))),
        }
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::missing(name)),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.opt_str(name)?
            .map(|s| s.parse().map_err(|_| ApiError::invalid_integer(name, s)))
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(name, format!("Invalid boolean: {other}"))),
        }
    }

    /// `metadata[k]=v` pairs; an empty value (which unsets a key at Stripe)
    /// is left out.
    fn metadata(&self) -> Result<Map<String, Value>, ApiError> {
        match self.0.get("metadata") {
            None => Ok(Map::new()),
            Some(Value::String(s)) if s.is_empty() => Ok(Map::new()),
            Some(Value::Object(map)) => map
                .iter()
                .filter(|(_, v)| v.as_str() != Some(""))
                .map(|(k, v)| match v {
                    Value::String(_) => Ok((k.clone(), v.clone())),
                    _ => Err(ApiError::invalid(
                        &format!("metadata[{k}]"),
                        "Invalid string",
                    )),
                })
                .collect(),
            Some(_) => Err(ApiError::invalid("metadata", "Invalid hash")),
        }
    }

    /// Whether `expand[]` (or `expand[0]`, or `expand`) names `field`.
    fn expands(&self, field: &str) -> Result<bool, ApiError> {
        match self.0.get("expand") {
            None => Ok(false),
            Some(Value::String(s)) => Ok(s == field),
            Some(Value::Array(items)) => Ok(items.iter().any(|i| i == field)),
            Some(_) => Err(ApiError::invalid("expand", "Invalid array")),
        }
    }
}
