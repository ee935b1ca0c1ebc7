//! The database goes away while the proxy serves, and comes back: calls that
//! need it get a clear, temporary refusal (never a pass, never a hang),
//! `/readyz` says the database is failing, usage records wait in memory, and
//! everything recovers without a restart. The outage is real: the proxy
//! reaches PostgreSQL (and MariaDB) through a TCP relay that the test cuts.

mod common;

use common::admin_json as cli_json;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::db::TestDb;
use common::{Proxy, RawClient, first_text};
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `target` that can be cut (existing connections closed,
/// new ones refused) and restored.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = watch::channel(0u64);
        let accepting = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host:port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.parse().unwrap()
}

async fn readyz(proxy: &Proxy) -> (u16, Value) {
    let url = proxy.url.replace("/mcp", "/readyz");
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn outage_and_recovery(db: TestDb) {
    let direct = db.url().to_owned();
    let relay = Relay::start(target_of(&direct)).await;
    let relayed = through(&direct, relay.addr);
    let customer = cli_json(&direct, &["customers", "add", "--name", "Steady", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = cli_json(
        &direct,
        &["keys", "create", "--customer", &customer, "--json"],
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::serve(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
             [database]\nurl = {relayed:?}\nacquire_timeout_secs = 1\n[usage]\nretry_backoff_max_ms = 200\n",
            common::bin()
        ),
    );
    let mut client = RawClient::with_bearer(&proxy.url, &key);
    client.initialize("2025-11-25").await;
    let before = client
        .call_tool(json!(1), "echo", json!({"message": "before"}))
        .await
        .response();
    assert_eq!(first_text(&before), "before");
    assert_eq!(readyz(&proxy).await.0, 200);

    relay.cut();
    // The key was read less than a lease ago: the call is served from
    // memory (its usage record waits for the database).
    let leased = client
        .call_tool(json!(2), "echo", json!({"message": "leased"}))
        .await
        .response();
    assert_eq!(first_text(&leased), "leased", "{leased}");
    // Past the lease the key must be read again, and that is refused.
    tokio::time::sleep(CREDENTIAL_LEASE).await;
    let during = client
        .call_tool(json!(3), "echo", json!({"message": "during"}))
        .await;
    assert_eq!(during.status, 503, "{during:?}");
    assert!(during.headers.contains_key("retry-after"));
    let body = during.response();
    assert_eq!(body["error"]["code"], -32012, "{body}");
    assert_eq!(body["error"]["data"]["reason"], "auth_store_unavailable");
    let (status, ready) = readyz(&proxy).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"]["status"], "failing", "{ready}");

    relay.restore();
    let mut recovered = None;
    for i in 0..100 {
        let answer = client
            .call_tool(json!(10 + i), "echo", json!({"message": "after"}))
            .await;
        if answer.status == 200 {
            recovered = Some(answer.response());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.expect("the proxy recovers when the database is back");
    assert_eq!(first_text(&recovered), "after");
    assert_eq!(readyz(&proxy).await.0, 200);
    assert!(proxy.terminate().success());

    // The records of calls made around the outage all reached the database.
    let records = cli_json(&direct, &["usage", "--customer", &customer, "--json"]);
    let ok_echoes = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == "echo" && r["outcome"] == "ok")
        .count();
    assert_eq!(ok_echoes, 3, "{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_refused_clearly_and_recovers() {
    outage_and_recovery(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_is_refused_clearly_and_recovers() {
    outage_and_recovery(TestDb::mysql().await).await;
}
