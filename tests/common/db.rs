//! Fresh databases for store tests: a temporary SQLite file, or a new
//! `mm_test_<random>` database on the PostgreSQL or MariaDB test server,
//! dropped when the [`TestDb`] guard goes. The servers are expected to run
//! (locally and in CI); an unreachable one fails the test, it never skips.
//!
//! Server URLs: `MCP_METER_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `MCP_METER_TEST_MYSQL`
//! (default `mysql://root@127.0.0.1:3306/test`).
//!
//! [`each_backend!`](crate::each_backend) turns `async fn name(db: TestDb)`
//! into three tests, `name::sqlite`, `name::postgres` and `name::mysql`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_meter::store::{self, Store, StoreOptions};
use rand::Rng;
use rand::distr::Alphanumeric;
use sqlx::{AssertSqlSafe, Connection};

/// Which backend a test database is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

/// A database for one test, dropped with the guard.
pub struct TestDb {
    kind: Kind,
    url: String,
    /// The server-side database to drop, with the server's admin URL.
    server: Option<(String, String)>,
    dir: Option<tempfile::TempDir>,
}

fn server_url(kind: Kind) -> String {
    let (var, default) = match kind {
        Kind::Postgres => (
            "MCP_METER_TEST_POSTGRES",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        Kind::MySql => ("MCP_METER_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
        Kind::Sqlite => unreachable!("SQLite needs no server"),
    };
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a server URL has ://");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let query = rest.find('?').map(|at| &rest[at..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

/// Runs one SQL text on the server at `url` (a fresh connection).
pub async fn run_sql(kind: Kind, url: &str, sql: &str) {
    let sql = AssertSqlSafe(sql.to_owned());
    let outcome = match kind {
        Kind::Sqlite => match sqlx::SqliteConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        },
        Kind::Postgres => match sqlx::PgConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        },
        Kind::MySql => match sqlx::MySqlConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        },
    };
    if let Err(error) = outcome {
        panic!("{kind:?} test server at {url}: {error} (is it running?)");
    }
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        TestDb {
            kind: Kind::Sqlite,
            url,
            server: None,
            dir: Some(dir),
        }
    }

    /// A new database on the PostgreSQL test server.
    pub async fn postgres() -> TestDb {
        Self::on_server(Kind::Postgres).await
    }

    /// A new database on the MariaDB/MySQL test server.
    pub async fn mysql() -> TestDb {
        Self::on_server(Kind::MySql).await
    }

    async fn on_server(kind: Kind) -> TestDb {
        let admin = server_url(kind);
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let name = format!("mm_test_{}", suffix.to_ascii_lowercase());
        run_sql(kind, &admin, &format!("CREATE DATABASE {name}")).await;
        TestDb {
            kind,
            url: with_database(&admin, &name),
            server: Some((admin, name)),
            dir: None,
        }
    }

    /// The backend.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory holding a SQLite test database (its file, WAL and
    /// shared-memory files). Server databases have none.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            None => panic!("a {:?} test database has no directory", self.kind),
        }
    }

    /// Store options for this database (short acquire timeout).
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            url: self.url.clone(),
            max_connections: 5,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// Opens (and migrates) the store; panics with the error otherwise.
    pub async fn open(&self) -> Arc<dyn Store> {
        match store::open(&self.options()).await {
            Ok(store) => store,
            Err(error) => panic!("open {:?} store: {error}", self.kind),
        }
    }

    /// Opens the store with room for a burst of concurrent writers: more
    /// connections than [`Self::options`] and a long acquire timeout
    /// (hundreds of tasks queue for the pool while the writes of one
    /// balance or counter take their turn on its row).
    pub async fn open_wide(&self) -> Arc<dyn Store> {
        let options = StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(120),
            ..self.options()
        };
        match store::open(&options).await {
            Ok(store) => store,
            Err(error) => panic!("open {:?} store: {error}", self.kind),
        }
    }

    /// Runs raw SQL on this database (outside the store).
    pub async fn execute(&self, sql: &str) {
        run_sql(self.kind, &self.url, sql).await;
    }
}

/// A lock held on a test database until [`HeldLock::release`].
pub struct HeldLock {
    release: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl HeldLock {
    /// Ends the transaction holding the lock and waits until it ended.
    pub async fn release(self) {
        let _ = self.release.send(());
        self.done.await.expect("lock holder");
    }
}

impl TestDb {
    /// Takes the write lock of a customer's balance row from a connection
    /// of its own (on SQLite, the database's one write lock), so that
    /// writers of that balance wait until it is released.
    pub async fn hold_balance_lock(&self, customer: &str) -> HeldLock {
        self.hold_lock(&format!(
            "SELECT balance FROM balances WHERE customer_id = '{customer}' FOR UPDATE"
        ))
        .await
    }

    /// Runs `lock` (a `SELECT … FOR UPDATE`) in a transaction of its own
    /// connection and holds that transaction open (on SQLite, takes the
    /// database's one write lock instead), until released.
    pub async fn hold_lock(&self, lock: &str) -> HeldLock {
        let (kind, url, lock) = (self.kind, self.url.clone(), lock.to_owned());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (taken, is_taken) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            macro_rules! hold {
                ($conn:ty, $begin:expr, $lock:expr) => {{
                    let mut conn = <$conn>::connect(&url).await.expect("connect");
                    for sql in [$begin, $lock] {
                        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                            .execute(&mut conn)
                            .await
                            .expect("take the lock");
                    }
                    let _ = taken.send(());
                    let _ = released.await;
                    sqlx::raw_sql("COMMIT")
                        .execute(&mut conn)
                        .await
                        .expect("commit");
                }};
            }
            match kind {
                Kind::Sqlite => hold!(sqlx::SqliteConnection, "BEGIN IMMEDIATE", "SELECT 1"),
                Kind::Postgres => hold!(sqlx::PgConnection, "BEGIN", lock.as_str()),
                Kind::MySql => hold!(sqlx::MySqlConnection, "BEGIN", lock.as_str()),
            }
        });
        is_taken.await.expect("the lock is taken");
        HeldLock { release, done }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.server.take() else {
            return;
        };
        let kind = self.kind;
        let sql = match kind {
            Kind::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            _ => format!("DROP DATABASE IF EXISTS {name}"),
        };
        // Drop runs inside the test's runtime; the drop gets its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run_sql(kind, &admin, &sql));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop test database {name}");
        }
    }
}

/// Turns each `async fn NAME(db: TestDb)` into the tests `NAME::sqlite`,
/// `NAME::postgres` and `NAME::mysql`, each on a fresh database.
#[macro_export]
macro_rules! each_backend {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::common::db::TestDb::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test($crate::common::db::TestDb::postgres().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$test($crate::common::db::TestDb::mysql().await).await
            }
        }
    )+};
}
