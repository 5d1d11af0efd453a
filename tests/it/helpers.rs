//! Test harness: a fresh database per test (PostgreSQL or SQLite), the server
//! in-process or as the real binary, and the Python tools (grpcurl, grpcio).
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

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

/// Spawns a binary that logs JSON lines on stderr, and waits for the line
/// `message` that gives the address it listens on. Its logs are kept.
pub fn spawn_listening(
    mut cmd: Command,
    message: &'static str,
) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == message
            {
                let _ = addr_tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr.parse().expect("listening address"),
        Err(_) => {
            let _ = child.kill();
            panic!("{cmd:?} did not start; logs: {:?}", logs.lock().unwrap());
        }
    };
    (child, addr, logs)
}

/// The real `tollgate` binary with a clean environment.
pub fn tollgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TOLLGATE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs the binary with `args` against `db`, expects success, returns stdout.
pub fn run_tollgate(db: &TestDb, args: &[&str]) -> String {
    let out = tollgate()
        .args(["--database-url", db.url()])
        .args(args)
        .output()
        .expect("running tollgate");
    assert!(
        out.status.success(),
        "tollgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// The real binary serving on a free port, logging JSON lines.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `tollgate [global args] serve` and waits for its "serving" line.
    pub fn start(global_args: &[&str]) -> Self {
        Self::spawn(tollgate(), global_args)
    }

    /// The same with `TOLLGATE_*` settings in its environment.
    pub fn start_env(global_args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = tollgate();
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn(cmd, global_args)
    }

    /// Kills the process at once (SIGKILL): no drain, no final flush.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// The same, run from `dir` (where the default `./tollgate-data` goes).
    pub fn start_in(dir: &Path, global_args: &[&str]) -> Self {
        let mut cmd = tollgate();
        cmd.current_dir(dir);
        Self::spawn(cmd, global_args)
    }

    /// The same on a given address, e.g. to come back where it was.
    pub fn start_at(addr: SocketAddr, global_args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = tollgate();
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn_on(cmd, global_args, &addr.to_string())
    }

    /// `cmd` (a [`tollgate`] command) serving on a free port.
    pub fn spawn(cmd: Command, global_args: &[&str]) -> Self {
        Self::spawn_on(cmd, global_args, "127.0.0.1:0")
    }

    fn spawn_on(mut cmd: Command, global_args: &[&str], listen: &str) -> Self {
        cmd.args(global_args)
            .args(["serve", "--listen", listen, "--log-format", "json"]);
        let (child, addr, logs) = spawn_listening(cmd, "tollgate serving");
        Self { addr, child, logs }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "tollgate exited with {status}; logs: {:?}",
                    self.logs()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const REDIS_HINT: &str = "Redis is not reachable at 127.0.0.1:6379: start it (service redis-server start) or set TOLLGATE_TEST_REDIS_URL";

/// Redis for one test: the machine's server under a key prefix of the test's
/// own (deleted after), or a private `redis-server` for tests that flush or
/// stop it.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
    own: Option<Child>,
}

impl TestRedis {
    pub fn shared() -> Self {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = Self {
            url,
            prefix: format!("tgtest-{}", uuid::Uuid::now_v7().simple()),
            own: None,
        };
        redis
            .ping()
            .unwrap_or_else(|e| panic!("{REDIS_HINT} ({e})"));
        redis
    }

    /// A `redis-server` of this test's own on a free port, keeping nothing
    /// on disk.
    pub fn own() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server could not be run: install it (apt-get install redis-server) ({e})"
                )
            });
        let redis = Self {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "tollgate".into(),
            own: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.ping().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = redis::Client::open(self.url.as_str())?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        redis::cmd("PING").query(&mut conn)
    }

    /// A plain connection for the test's own commands.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connecting to the test Redis")
    }

    /// Runs one command and returns its answer.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.connection()).expect("redis command")
    }

    /// Stops a private server (SIGKILL), keeping its port for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.own.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a private server: connections
    /// stay open and calls hang, as with a Redis stuck on a slow command.
    pub fn freeze(&self, frozen: bool) {
        let child = self.own.as_ref().expect("a private redis-server");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts a stopped private server again, empty, on the same port.
    pub fn restart(&mut self) {
        let port = self.url.rsplit(':').next().expect("port").to_owned();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("restarting redis-server");
        self.own = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.own.take() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        // The shared server: remove this test's keys.
        if let Ok(mut conn) = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv with the Python tools of `tests/python/requirements.txt`:
/// `TOLLGATE_TEST_VENV` when set (CI makes a throwaway one), else
/// `target/test-venv`, created on first use.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Ok(dir) = std::env::var("TOLLGATE_TEST_VENV") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("bin/python").exists(),
                "TOLLGATE_TEST_VENV={} has no bin/python",
                dir.display()
            );
            return dir;
        }
        let dir = project_dir().join("target/test-venv");
        let requirements = project_dir().join("tests/python/requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
        let stamp = dir.join("requirements.stamp");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return dir;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3 -m venv failed: install python3 with the venv module"
        );
        let ok = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(&requirements)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "pip install -r tests/python/requirements.txt failed: PyPI must be reachable"
        );
        std::fs::write(&stamp, wanted).expect("stamp");
        dir
    })
}

/// Runs grpcurl 1.8.6 from the test virtualenv.
pub fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new(venv().join("bin/grpcurl"))
        .args(args)
        .output()
        .expect("running grpcurl")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether `addr` answers `grpc.health.v1.Health/Check` with SERVING within
/// a second, as a kubelet's gRPC probe asks.
pub async fn serving(addr: &str) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        Some(answer.into_inner().status == ServingStatus::Serving as i32)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), check).await,
        Ok(Some(true))
    )
}

/// Waits until `addr` is SERVING; false if it is not within `within`.
pub async fn wait_serving(addr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if serving(addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
