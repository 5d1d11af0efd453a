//! Test harness: a fresh database per test (PostgreSQL or SQLite), the server
//! in-process or as the real binary (`process`), Redis (`redis_server`), a
//! Redis Cluster (`redis_cluster`), and the Python tools (`python`: grpcurl,
//! grpcio and the rest).
mod pki;
mod postgres_server;
mod process;
mod python;
mod redis_cluster;
mod redis_server;
mod sql_count;

use tollgate::{
    config::{Config, Overrides},
    domain::{
        credential::{Credential, Scope, issue_token},
        ids::CredentialId,
        now,
    },
    grpc::pb::{billing_client::BillingClient, keys_client::KeysClient, plans_client::PlansClient},
    startup::Application,
    store::{CredentialStore, sql::SqlStore},
};
use tonic::transport::Channel;

pub use pki::{Issued, Pki};
pub use postgres_server::PrivatePostgres;
pub use process::{
    Server, free_port, http_get, run_tollgate, serving, spawn_listening, tollgate, wait_serving,
};
pub use python::{grpcurl, python_script, venv};
pub use redis_cluster::TestRedisCluster;
pub use redis_server::TestRedis;
pub use sql_count::SqlCount;

pub const PG_HINT: &str = "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres): start it (pg_ctlcluster 15 main start) or set TOLLGATE_TEST_POSTGRES_URL";

fn postgres_base() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own for one test; a PostgreSQL one is dropped after.
pub struct TestDb {
    url: String,
    kind: Kind,
}

enum Kind {
    Postgres {
        name: String,
    },
    /// Held so the directory lives as long as the database.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    /// A database the test owns otherwise (a private server's).
    Given,
}

impl TestDb {
    pub async fn postgres() -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("tollgate_test_{}", uuid::Uuid::now_v7().simple());
        let admin = format!("{}/postgres", postgres_base());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("creating the test database");
        Self {
            url: format!("{}/{name}", postgres_base()),
            kind: Kind::Postgres { name },
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            url: format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("tollgate.db").display()
            ),
            kind: Kind::Sqlite { _dir: dir },
        }
    }

    /// The database at `url`, left as it is when the test ends.
    pub fn given(url: String) -> Self {
        Self {
            url,
            kind: Kind::Given,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> SqlStore {
        SqlStore::open(&self.url, 4)
            .await
            .expect("opening the store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Kind::Postgres { name } = &self.kind {
            let name = name.clone();
            // Drop runs outside any runtime we may block; use a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let admin = format!("{}/postgres", postgres_base());
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ = sqlx::Executor::execute(
                            &mut conn,
                            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                        )
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Generates `<case>::postgres` and `<case>::sqlite` tests from one
/// `async fn <case>(db: TestDb)`: every case runs on every backend.
#[macro_export]
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn postgres() {
                super::$case($crate::helpers::TestDb::postgres().await).await
            }

            #[tokio::test]
            async fn sqlite() {
                super::$case($crate::helpers::TestDb::sqlite().await).await
            }
        }
    )+};
}

async fn credential(store: &SqlStore, scope: Scope) -> String {
    let token = issue_token();
    let c = Credential {
        id: CredentialId::generate(),
        name: format!("test {}", scope.as_str()),
        scope,
        created_at: now(),
        expires_at: None,
        revoked_at: None,
        seeded: false,
    };
    store
        .create_credential(&c, token.hash())
        .await
        .expect("credential");
    token.into_exposed()
}

/// A plan that passes every check: tests build theirs from it, changing
/// only the fields they are about.
pub fn valid_plan(slug: &str) -> tollgate::grpc::pb::Plan {
    use tollgate::grpc::pb;
    pb::Plan {
        slug: slug.into(),
        display_name: format!("Plan {slug}"),
        price: Some(pb::Price {
            amount_minor: 2_900,
            currency: "USD".into(),
        }),
        billing_interval: pb::BillingInterval::Month as i32,
        trial_days: 0,
        rate_limit: Some(pb::RateLimit {
            requests_per_minute: 600,
            burst: 20,
        }),
        quotas: vec![pb::Quota {
            resource: "chat_requests".into(),
            included_units: 10_000,
            overage_policy: pb::OveragePolicy::Billed as i32,
            overage_unit_price_micros: 500,
        }],
        features: vec!["model:gpt-4o".into()],
        quota_reset: Some(pb::QuotaReset {
            schedule: Some(pb::quota_reset::Schedule::CalendarMonth(
                pb::quota_reset::CalendarMonth { day: 1 },
            )),
        }),
        ..Default::default()
    }
}

/// The server running inside the test process on a free port.
pub struct InProcess {
    pub admin_token: String,
    pub verify_token: String,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    db: TestDb,
    _redis: Option<TestRedis>,
}

impl InProcess {
    pub async fn start(db: TestDb) -> Self {
        Self::start_with(db, None, |_| {}).await
    }

    /// The server on `db`, sharing `redis` when given, with `tune` applied
    /// to its configuration.
    pub async fn start_with(
        db: TestDb,
        redis: Option<TestRedis>,
        tune: impl FnOnce(&mut Config),
    ) -> Self {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(db.url().to_owned()),
            redis_url: redis.as_ref().map(|r| r.url.clone()),
            ..Overrides::default()
        };
        let mut config = Config::load(None, &overrides).expect("config");
        config.verify_read_budget_millis = process::SUITE_READ_BUDGET_MILLIS;
        if let Some(redis) = &redis {
            config.redis_key_prefix = redis.prefix.clone();
        }
        tune(&mut config);
        let app = Application::build(config).await.expect("building the app");
        let addr = app.local_addr();
        let store = db.store().await;
        let admin_token = credential(&store, Scope::Admin).await;
        let verify_token = credential(&store, Scope::Verify).await;
        store.close().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connecting to the in-process server");
        Self {
            admin_token,
            verify_token,
            channel,
            stop: Some(stop),
            db,
            _redis: redis,
        }
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    pub fn redis(&mut self) -> &mut TestRedis {
        self._redis.as_mut().expect("started with Redis")
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn plans(&self) -> PlansClient<Channel> {
        PlansClient::new(self.channel.clone())
    }

    pub fn billing(&self) -> BillingClient<Channel> {
        BillingClient::new(self.channel.clone())
    }

    pub fn keys(&self) -> KeysClient<Channel> {
        KeysClient::new(self.channel.clone())
    }

    /// A request carrying the admin credential.
    pub fn admin<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, &self.admin_token)
    }

    /// A request carrying the verify-scope credential.
    pub fn verify<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, &self.verify_token)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}
