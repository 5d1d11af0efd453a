//! Redis for tests: the machine's server under a key prefix of the test's
//! own, or a private `redis-server` that a test may stop, freeze or restart.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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
            // DEBUG SLEEP: a slow Redis, on demand.
            .args(["--enable-debug-command", "local"])
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

    /// A private `redis-server` that speaks only TLS (rediss://), with the
    /// certificate `server` of the CA `ca_file`.
    pub fn own_tls(server: &super::Issued, ca_file: &std::path::Path) -> Self {
        let port = super::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(ca_file)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server with TLS");
        let redis = Self {
            url: format!("rediss://127.0.0.1:{port}"),
            prefix: "tollgate".into(),
            own: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
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
            // DEBUG SLEEP: a slow Redis, on demand.
            .args(["--enable-debug-command", "local"])
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
