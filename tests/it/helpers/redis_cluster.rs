//! A private Redis Cluster for tests: masters of this test's own on free
//! ports, no replicas, keeping nothing but their node files in a temp dir.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

/// Redis Cluster masters of one test, stopped and removed on drop.
pub struct TestRedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: tempfile::TempDir,
}

impl TestRedisCluster {
    /// `masters` nodes sharing every hash slot, once the cluster says it is ok.
    pub fn start(masters: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self {
            ports: Vec::new(),
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters {
            let port = free_port();
            cluster.spawn_node(port);
            cluster.ports.push(port);
        }
        for url in cluster.node_urls() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while query::<String>(&url, &["PING"]).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server at {url} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("redis-cli could not be run: install it (apt-get install redis-tools) ({e})")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Slots are assigned at once, but each node says ok only once gossip
        // has told it about the others.
        let deadline = Instant::now() + Duration::from_secs(20);
        for url in cluster.node_urls() {
            loop {
                let info = query::<String>(&url, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster is not ok at {url}: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    fn spawn_node(&mut self, port: u16) {
        let dir = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            // The bus port defaults to port + 10000, past 65535 for the
            // high ephemeral ports free_port may give: pick one too.
            .args(["--cluster-port", &free_port().to_string()])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            // DEBUG SLEEP: a slow node, on demand.
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server could not be run: install it (apt-get install redis-server) ({e})"
                )
            });
        self.nodes.push(child);
    }

    /// The seed URLs, comma-separated, as `TOLLGATE_REDIS_URL` takes them.
    pub fn seeds(&self) -> String {
        self.node_urls().join(",")
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The node (in node order) that owns `key`'s slot: the others answer
    /// a plain connection's command on it with a MOVED redirection.
    pub fn owner_of(&self, key: &str) -> usize {
        self.node_urls()
            .iter()
            .position(|url| query::<i64>(url, &["EXISTS", key]).is_ok())
            .unwrap_or_else(|| panic!("no node owns {key}"))
    }

    /// How many keys match `pattern` on each node, in node order.
    pub fn keys_on_each_node(&self, pattern: &str) -> Vec<usize> {
        self.node_urls()
            .iter()
            .map(|url| {
                query::<Vec<String>>(url, &["KEYS", pattern])
                    .unwrap_or_else(|e| panic!("KEYS on {url}: {e}"))
                    .len()
            })
            .collect()
    }
}

/// One command on one node, over a plain (not cluster-aware) connection.
fn query<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> redis::RedisResult<T> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

impl Drop for TestRedisCluster {
    /// Kills the nodes; the temp dir with their node files goes after them.
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
