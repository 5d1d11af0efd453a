//! The real binaries as child processes: started on free ports, found
//! by the address they log, stopped with SIGTERM or SIGKILL; and probes of
//! their health as a kubelet would make them.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::transport::Channel;

use super::TestDb;

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

/// The Verify path's database budget of the suite's servers. The suite
/// runs dozens of servers, PostgreSQL and Redis on two cores, where reading
/// a new key can take longer than the production default (100 ms) and a
/// test would see UNAVAILABLE for a busy machine; the tests of a database
/// outage set the default back.
pub const SUITE_READ_BUDGET_MILLIS: u64 = 5_000;

/// The real `tollgate` binary with a clean environment.
pub fn tollgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TOLLGATE_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env(
        "TOLLGATE_VERIFY_READ_BUDGET_MILLIS",
        SUITE_READ_BUDGET_MILLIS.to_string(),
    );
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

    /// A connected channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connecting to the server")
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

/// An HTTP answer: its status, its head (status line and headers) and body.
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` on `addr` over HTTP/1.1 (the connection closed after), within
/// `timeout` for the answer.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of the head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(HttpAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}
