//! The auth layer against an in-memory directory: every way a credential can
//! be wrong is refused with the right code, the inner service never sees a
//! refused call, and an accepted call carries its `Caller`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use mcp_meter_auth::key::ApiKey;
use mcp_meter_auth::{AuthConfig, AuthLayer, Authenticator, Identity, TransportIdentity};
use mcp_meter_plugin::identity::*;
use mcp_meter_plugin::jsonrpc::Message;
use mcp_meter_plugin::ports::*;
use mcp_meter_plugin::{BoxMcpService, McpRequest, McpResponse, ProxyError};
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};

#[derive(Default)]
struct Directory {
    keys: Mutex<HashMap<[u8; 32], KeyGrant>>,
    touched: Mutex<Vec<(KeyId, UnixMillis)>>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl CustomerDirectory for Directory {
    async fn find_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyGrant>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(self.keys.lock().unwrap().get(hash).cloned())
    }
    async fn find_customer(&self, _: &CustomerId) -> Result<Option<Customer>, StoreError> {
        Ok(None)
    }
    async fn find_customer_by_subject(&self, _: &str) -> Result<Option<Customer>, StoreError> {
        Ok(None)
    }
    async fn provision_customer(&self, _: NewCustomer) -> Result<Customer, StoreError> {
        Err(StoreError::Other("not in this test".into()))
    }
    async fn touch_keys(&self, used: &[(KeyId, UnixMillis)]) -> Result<(), StoreError> {
        self.touched.lock().unwrap().extend_from_slice(used);
        Ok(())
    }
}

struct FixedClock(UnixMillis);
impl Clock for FixedClock {
    fn now(&self) -> UnixMillis {
        self.0
    }
}

fn customer(status: CustomerStatus) -> Customer {
    Customer {
        id: CustomerId::new("cus_test"),
        name: "Test".into(),
        email: None,
        plan_id: None,
        status,
        stripe_customer_id: None,
        external_subject: None,
        metadata: Default::default(),
        created_at: UnixMillis(0),
        updated_at: UnixMillis(0),
    }
}

struct Setup {
    directory: Arc<Directory>,
    authenticator: Arc<Authenticator>,
    upstream_calls: Arc<AtomicUsize>,
    stack: BoxMcpService,
}

const NOW: UnixMillis = UnixMillis(1_000_000);

fn setup(config: AuthConfig) -> Setup {
    let directory = Arc::new(Directory::default());
    let authenticator =
        Arc::new(Authenticator::new(config, directory.clone(), Arc::new(FixedClock(NOW))).unwrap());
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let calls = upstream_calls.clone();
    let inner = service_fn(move |req: McpRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        let who = req
            .extensions
            .get::<Arc<Caller>>()
            .map(|c| c.customer.id.to_string())
            .unwrap_or_else(|| "anonymous".into());
        let id = req.message.id().cloned().unwrap();
        async move {
            let result =
                serde_json::value::to_raw_value(&serde_json::json!({ "who": who })).unwrap();
            Ok::<_, ProxyError>(McpResponse::result(&id, &result))
        }
    });
    let stack = BoxMcpService::new(AuthLayer::new(authenticator.clone()).layer(inner));
    Setup {
        directory,
        authenticator,
        upstream_calls,
        stack,
    }
}

fn add_key(setup: &Setup, status: CustomerStatus, edit: impl FnOnce(&mut ApiKeyRecord)) -> ApiKey {
    let key = ApiKey::generate();
    let mut record = ApiKeyRecord {
        id: KeyId::new("key_test"),
        customer_id: CustomerId::new("cus_test"),
        prefix: key.visible_prefix().into(),
        name: None,
        scope: KeyScope::default(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        created_at: UnixMillis(0),
    };
    edit(&mut record);
    setup.directory.keys.lock().unwrap().insert(
        key.hash(),
        KeyGrant {
            key: record,
            customer: customer(status),
        },
    );
    key
}

fn call(method: &str, tool: Option<&str>, key: Option<&str>) -> McpRequest {
    let params = match tool {
        Some(tool) => format!(r#"{{"name":"{tool}","arguments":{{}}}}"#),
        None => "{}".into(),
    };
    let text = format!(r#"{{"jsonrpc":"2.0","id":"r-1","method":"{method}","params":{params}}}"#);
    let mut request = McpRequest::new(Message::parse(Bytes::from(text)).unwrap());
    if let Some(key) = key {
        request
            .credentials
            .headers
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

async fn send(setup: &Setup, request: McpRequest) -> (serde_json::Value, McpResponse) {
    let response = setup.stack.clone().oneshot(request).await.unwrap();
    let value = serde_json::from_slice(response.message.as_bytes()).unwrap();
    (value, response)
}

async fn refused(setup: &Setup, request: McpRequest, code: i64, public: &str, internal: &str) {
    let before = setup.upstream_calls.load(Ordering::SeqCst);
    let (value, response) = send(setup, request).await;
    assert_eq!(value["id"], "r-1", "{value}");
    assert_eq!(value["error"]["code"], code, "{value}");
    assert_eq!(value["error"]["data"]["reason"], public, "{value}");
    assert_eq!(
        response.extensions.get::<Refusal>().map(|r| r.reason),
        Some(internal)
    );
    assert_eq!(
        setup.upstream_calls.load(Ordering::SeqCst),
        before,
        "the upstream saw a refused call"
    );
}

#[tokio::test]
async fn a_valid_key_reaches_the_upstream_with_its_customer() {
    let s = setup(AuthConfig::default());
    let key = add_key(&s, CustomerStatus::Active, |_| {});
    let (value, response) = send(&s, call("tools/call", Some("echo"), Some(key.expose()))).await;
    assert_eq!(value["result"]["who"], "cus_test");
    let caller = response.extensions.get::<Arc<Caller>>().unwrap();
    assert_eq!(caller.key_id().unwrap().as_str(), "key_test");
    s.authenticator.flush_last_used().await;
    assert_eq!(
        s.directory.touched.lock().unwrap().as_slice(),
        &[(KeyId::new("key_test"), NOW)]
    );
}

#[tokio::test]
async fn x_api_key_header_and_stdio_key_work_too() {
    let s = setup(AuthConfig::default());
    let key = add_key(&s, CustomerStatus::Active, |_| {});
    let mut request = call("tools/list", None, None);
    request
        .credentials
        .headers
        .insert("x-api-key", key.expose().parse().unwrap());
    assert_eq!(send(&s, request).await.0["result"]["who"], "cus_test");
    let mut request = call("tools/list", None, None);
    request.credentials.api_key = Some(key.expose().into());
    assert_eq!(send(&s, request).await.0["result"]["who"], "cus_test");
}

#[tokio::test]
async fn every_bad_credential_is_refused_before_the_upstream() {
    let s = setup(AuthConfig::default());
    let revoked = add_key(&s, CustomerStatus::Active, |k| {
        k.revoked_at = Some(UnixMillis(5))
    });
    refused(
        &s,
        call("tools/call", Some("echo"), None),
        -32010,
        "missing_credential",
        "missing_credential",
    )
    .await;
    refused(
        &s,
        call("tools/call", Some("echo"), Some("mcp_short")),
        -32010,
        "malformed_api_key",
        "malformed_api_key",
    )
    .await;
    let mut typo = ApiKey::generate().expose().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    refused(
        &s,
        call("tools/call", Some("echo"), Some(&typo)),
        -32010,
        "malformed_api_key",
        "malformed_api_key",
    )
    .await;
    let unknown = ApiKey::generate();
    refused(
        &s,
        call("tools/call", Some("echo"), Some(unknown.expose())),
        -32010,
        "invalid_api_key",
        "key_unknown",
    )
    .await;
    refused(
        &s,
        call("tools/call", Some("echo"), Some(revoked.expose())),
        -32010,
        "invalid_api_key",
        "key_revoked",
    )
    .await;
    refused(
        &s,
        call("tools/call", Some("echo"), Some("not-a-credential")),
        -32010,
        "malformed_credential",
        "malformed_credential",
    )
    .await;
    refused(
        &s,
        call("tools/call", Some("echo"), Some("a.b.c")),
        -32010,
        "jwt_disabled",
        "jwt_disabled",
    )
    .await;
}

#[tokio::test]
async fn unknown_revoked_and_expired_keys_get_the_same_message() {
    let s = setup(AuthConfig::default());
    let revoked = add_key(&s, CustomerStatus::Active, |k| {
        k.revoked_at = Some(UnixMillis(5))
    });
    let expired = add_key(&s, CustomerStatus::Active, |k| k.expires_at = Some(NOW));
    let unknown = ApiKey::generate();
    let mut messages = Vec::new();
    for key in [&revoked, &expired, &unknown] {
        let (value, _) = send(&s, call("tools/call", Some("echo"), Some(key.expose()))).await;
        messages.push(value["error"].clone());
    }
    assert_eq!(messages[0], messages[1]);
    assert_eq!(messages[1], messages[2]);
}

#[tokio::test]
async fn suspended_customers_and_out_of_scope_calls_are_forbidden() {
    let s = setup(AuthConfig::default());
    let suspended = add_key(&s, CustomerStatus::Suspended, |_| {});
    refused(
        &s,
        call("tools/call", Some("echo"), Some(suspended.expose())),
        -32011,
        "customer_suspended",
        "customer_suspended",
    )
    .await;
    let scoped = add_key(&s, CustomerStatus::Active, |k| {
        k.scope = KeyScope {
            tools: vec!["search_*".into()],
            methods: vec![],
        }
    });
    refused(
        &s,
        call("tools/call", Some("echo"), Some(scoped.expose())),
        -32011,
        "out_of_scope",
        "out_of_scope",
    )
    .await;
    let (ok, _) = send(
        &s,
        call("tools/call", Some("search_web"), Some(scoped.expose())),
    )
    .await;
    assert_eq!(ok["result"]["who"], "cus_test");
}

#[tokio::test]
async fn public_methods_pass_without_a_credential_but_a_bad_one_is_still_refused() {
    let s = setup(AuthConfig::default());
    let (value, _) = send(&s, call("initialize", None, None)).await;
    assert_eq!(value["result"]["who"], "anonymous");
    refused(
        &s,
        call("tools/list", None, None),
        -32010,
        "missing_credential",
        "missing_credential",
    )
    .await;
    refused(
        &s,
        call("initialize", None, Some(ApiKey::generate().expose())),
        -32010,
        "invalid_api_key",
        "key_unknown",
    )
    .await;
    let open = setup(AuthConfig {
        public_methods: vec!["initialize".into(), "tools/list".into()],
        ..AuthConfig::default()
    });
    assert_eq!(
        send(&open, call("tools/list", None, None)).await.0["result"]["who"],
        "anonymous"
    );
}

#[tokio::test]
async fn conflicting_credentials_are_refused() {
    let s = setup(AuthConfig::default());
    let key = add_key(&s, CustomerStatus::Active, |_| {});
    let mut request = call("tools/list", None, Some(key.expose()));
    request
        .credentials
        .headers
        .insert("x-api-key", ApiKey::generate().expose().parse().unwrap());
    refused(
        &s,
        request,
        -32010,
        "conflicting_credentials",
        "conflicting_credentials",
    )
    .await;
}

#[tokio::test]
async fn a_store_outage_is_a_clear_temporary_refusal() {
    let s = setup(AuthConfig::default());
    let key = add_key(&s, CustomerStatus::Active, |_| {});
    s.directory.down.store(true, Ordering::SeqCst);
    refused(
        &s,
        call("tools/call", Some("echo"), Some(key.expose())),
        -32012,
        "auth_store_unavailable",
        "auth_store_unavailable",
    )
    .await;
    s.directory.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&s, call("tools/call", Some("echo"), Some(key.expose())))
            .await
            .0["result"]["who"],
        "cus_test"
    );
}

#[tokio::test]
async fn a_transport_identity_is_used_without_a_second_lookup() {
    let s = setup(AuthConfig::default());
    let mut request = call("tools/list", None, None);
    request
        .extensions
        .insert(TransportIdentity(Identity::Anonymous));
    // tools/list is not public: the transport's decision is not re-made, but
    // authorization still applies; an anonymous identity only passes where
    // the transport let it (it checks public methods itself).
    let (value, _) = send(&s, request).await;
    assert_eq!(value["result"]["who"], "anonymous");
}

#[tokio::test]
async fn a_valid_key_is_read_once_per_lease_and_never_trusted_longer() {
    let s = setup(AuthConfig::default());
    let key = add_key(&s, CustomerStatus::Active, |_| {});
    let served = |value: Value| value["result"]["who"] == "cus_test";
    assert!(served(
        send(&s, call("tools/call", Some("echo"), Some(key.expose())))
            .await
            .0
    ));
    // Within the lease the key is not read again: the store being down or
    // the key revoked there changes nothing yet.
    s.directory.down.store(true, Ordering::SeqCst);
    assert!(served(
        send(&s, call("tools/call", Some("echo"), Some(key.expose())))
            .await
            .0
    ));
    s.directory.down.store(false, Ordering::SeqCst);
    for grant in s.directory.keys.lock().unwrap().values_mut() {
        grant.key.revoked_at = Some(UnixMillis(5));
    }
    assert!(served(
        send(&s, call("tools/call", Some("echo"), Some(key.expose())))
            .await
            .0
    ));
    // After it, the key is read again and the revocation applies.
    tokio::time::sleep(CREDENTIAL_LEASE).await;
    refused(
        &s,
        call("tools/call", Some("echo"), Some(key.expose())),
        -32010,
        "invalid_api_key",
        "key_revoked",
    )
    .await;
}

#[tokio::test]
async fn keys_that_fail_are_read_every_time() {
    let s = setup(AuthConfig::default());
    // A suspended customer's key: resuming applies to the next call.
    let key = add_key(&s, CustomerStatus::Suspended, |_| {});
    refused(
        &s,
        call("tools/call", Some("echo"), Some(key.expose())),
        -32011,
        "customer_suspended",
        "customer_suspended",
    )
    .await;
    for grant in s.directory.keys.lock().unwrap().values_mut() {
        grant.customer.status = CustomerStatus::Active;
    }
    let (value, _) = send(&s, call("tools/call", Some("echo"), Some(key.expose()))).await;
    assert_eq!(value["result"]["who"], "cus_test", "{value}");
    // An unknown key that is then created works on its next call.
    let later = ApiKey::generate();
    refused(
        &s,
        call("tools/call", Some("echo"), Some(later.expose())),
        -32010,
        "invalid_api_key",
        "key_unknown",
    )
    .await;
    let grant = s
        .directory
        .keys
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    s.directory.keys.lock().unwrap().insert(later.hash(), grant);
    let (value, _) = send(&s, call("tools/call", Some("echo"), Some(later.expose()))).await;
    assert_eq!(value["result"]["who"], "cus_test", "{value}");
}
