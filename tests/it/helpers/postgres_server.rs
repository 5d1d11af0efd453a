//! A PostgreSQL server of one test's own (initdb into a temporary folder, on
//! a free port), which the test may freeze, kill and start again: never the
//! machine's shared one.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const HINT: &str = "PostgreSQL's server binaries (initdb, postgres) were not found: install them (apt-get install postgresql) or set TOLLGATE_TEST_PG_BINDIR";

pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bindir: PathBuf,
}

/// Where initdb and postgres are: `pg_config --bindir`, or the setting.
fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("TOLLGATE_TEST_PG_BINDIR") {
        return dir.into();
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("{HINT} ({e})"));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(dir.join("initdb").is_file(), "{HINT} (not in {dir:?})");
    dir
}

/// Runs a server binary; as root, as the `postgres` user (PostgreSQL
/// refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bindir = bindir();
        let dir = tempfile::tempdir().expect("temp dir");
        let chown = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status();
        // Only root needs (and can) hand the folder to postgres.
        let _ = chown;
        let status = as_postgres(&bindir.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{HINT} ({e})"));
        assert!(status.success(), "initdb failed");
        let port = super::free_port();
        let pg = Self { port, dir, bindir };
        pg.run();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on the data folder and waits until it answers.
    fn run(&self) {
        let log = self.dir.path().join("postgres.log");
        as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's processes: the postmaster and its children.
    fn pids(&self) -> Vec<String> {
        let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) else {
            return Vec::new();
        };
        let main = pidfile.lines().next().unwrap_or_default().trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &main])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        std::iter::once(main)
            .chain(children.split_whitespace().map(str::to_owned))
            .filter(|p| !p.is_empty())
            .collect()
    }

    fn signal(&self, signal: &str) {
        let pids = self.pids();
        assert!(!pids.is_empty(), "the private PostgreSQL is not running");
        let status = Command::new("kill")
            .arg(signal)
            .args(&pids)
            .stderr(Stdio::null())
            .status()
            .expect("kill");
        assert!(status.success() || signal == "-KILL", "kill {signal}");
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) every process of the server:
    /// connections stay open and nothing answers, as when its host is cut
    /// off.
    pub fn freeze(&self, frozen: bool) {
        self.signal(if frozen { "-STOP" } else { "-CONT" });
    }

    /// Kills every process of the server (SIGKILL): connections are reset
    /// and new ones refused.
    pub fn kill(&self) {
        self.signal("-KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "PostgreSQL did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a killed server again on the same data and port.
    pub fn restart(&self) {
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
        self.run();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.pids().is_empty() {
            // Thawed first: a frozen server cannot die of SIGKILL's
            // aftermath (its children wait on the postmaster).
            let pids = self.pids();
            let _ = Command::new("kill").arg("-CONT").args(&pids).status();
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
    }
}
