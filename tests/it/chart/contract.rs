//! The container contract: the rendered manifests' containers, run with the
//! real binaries exactly as a kubelet would run them (command and args, the
//! image's ENV then the container's env with the Secrets' values filled in,
//! ConfigMaps and volumes where the container mounts them, Service names
//! resolved to where their pods listen), and probed as the kubelet probes
//! them. A wrong flag, setting name, port or Secret key in a template fails
//! here.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::*;
use crate::{
    helpers::{TestDb, TestRedis, free_port, http_get, serving},
    metrics::Scrape,
    polar::{SECRET, deliver_to, unknown_customer_update},
};

/// Where the rendered pods' files live: the container's `/` under a
/// temporary directory.
struct Node {
    root: tempfile::TempDir,
    manifests: Vec<Value>,
    /// `ENV` of the Dockerfile, the environment every container starts with.
    image_env: Vec<(String, String)>,
}

impl Node {
    fn new(manifests: Vec<Value>) -> Self {
        let dockerfile = std::fs::read_to_string(Path::new(PROJECT).join("Dockerfile")).unwrap();
        let image_env = dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("ENV "))
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Self {
            root: tempfile::tempdir().unwrap(),
            manifests,
            image_env,
        }
    }

    /// A path of the container's filesystem, on this machine.
    fn local(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// `text` with the container's mount paths made local, and Service
    /// addresses (`name:port`, `http://name:port`) made the local address of
    /// the pods behind them, as cluster DNS and kube-proxy would.
    fn translate(&self, text: &str, mounts: &[String]) -> String {
        let mut swaps: Vec<(String, String)> = mounts
            .iter()
            .map(|m| (m.clone(), self.local(m).to_str().unwrap().to_owned()))
            .collect();
        for service in self.manifests.iter().filter(|m| m["kind"] == "Service") {
            let name = service["metadata"]["name"].as_str().unwrap();
            for port in service["spec"]["ports"].as_array().unwrap() {
                swaps.push((
                    format!("{name}:{}", port["port"]),
                    format!("127.0.0.1:{}", self.target_port(service, port)),
                ));
            }
        }
        replace_words(text, &swaps)
    }

    /// The container port a Service port reaches (by number or by name, in
    /// the pods its selector matches).
    fn target_port(&self, service: &Value, port: &Value) -> u16 {
        let target = &port["targetPort"];
        if let Some(n) = target.as_u64() {
            return n as u16;
        }
        let selector = service["spec"]["selector"].as_object().unwrap();
        for workload in self.manifests.iter().filter(|m| m["kind"] == "Deployment") {
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            if selector.iter().all(|(k, v)| &labels[k] == v) {
                for p in container(workload)["ports"].as_array().unwrap() {
                    if p["name"] == *target {
                        return p["containerPort"].as_u64().unwrap() as u16;
                    }
                }
            }
        }
        panic!(
            "no pod port {target} behind Service {}",
            service["metadata"]["name"]
        );
    }

    /// The value of a Secret's key, as rendered (`data` is base64).
    fn secret(&self, name: &str, key: &str) -> String {
        let secret = self
            .manifests
            .iter()
            .find(|m| m["kind"] == "Secret" && m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name} is rendered"));
        if let Some(v) = secret["stringData"][key].as_str() {
            return v.to_owned();
        }
        base64_decode(
            secret["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("Secret {name} has no key {key}")),
        )
    }

    /// The container `name` of `pod` as a command: its files in place.
    fn command(&self, pod: &Value, name: &str) -> Command {
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"));
        let mut mounts = Vec::new();
        for mount in c["volumeMounts"].as_array().into_iter().flatten() {
            let path = mount["mountPath"].as_str().unwrap();
            let dir = self.local(path);
            std::fs::create_dir_all(&dir).unwrap();
            mounts.push(path.to_owned());
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("a volume for the mount");
            if let Some(configmap) = volume["configMap"]["name"].as_str() {
                let cm = self
                    .manifests
                    .iter()
                    .find(|m| m["kind"] == "ConfigMap" && m["metadata"]["name"] == configmap)
                    .unwrap_or_else(|| panic!("no ConfigMap {configmap} is rendered"));
                for (file, text) in cm["data"].as_object().unwrap() {
                    std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
                }
            }
        }
        // Files written first, then the text that names them translated.
        for mount in &mounts {
            for entry in std::fs::read_dir(self.local(mount)).unwrap() {
                let path = entry.unwrap().path();
                if let Ok(text) = std::fs::read_to_string(&path) {
                    std::fs::write(&path, self.translate(&text, &mounts)).unwrap();
                }
            }
        }
        let argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .map(|a| self.translate(a.as_str().unwrap(), &mounts))
            .collect();
        // The image's binaries, from /usr/local/bin on its PATH.
        let program = match argv[0].as_str() {
            "tollgate" => env!("CARGO_BIN_EXE_tollgate"),
            "tollgate-polar" => env!("CARGO_BIN_EXE_tollgate-polar"),
            other => panic!("the image has no {other}"),
        };
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..]).env_clear();
        for (k, v) in &self.image_env {
            cmd.env(k, self.translate(v, &mounts));
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            let value = if let Some(v) = e["value"].as_str() {
                self.translate(v, &mounts)
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                self.secret(r["name"].as_str().unwrap(), r["key"].as_str().unwrap())
            } else {
                panic!("env {name}: {e}");
            };
            cmd.env(name, value);
        }
        let workdir = self.local("/var/lib/tollgate");
        std::fs::create_dir_all(&workdir).unwrap();
        cmd.current_dir(workdir);
        cmd
    }

    /// Starts a container of a workload, its output kept in a file.
    fn start(&self, workload: &Value, name: &str) -> Running {
        let log = self
            .root
            .path()
            .join(format!("{}.log", uuid::Uuid::now_v7().simple()));
        let out = File::create(&log).unwrap();
        let child = self
            .command(pod_spec(workload), name)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the container's command");
        Running { child, log }
    }

    /// Runs a container to its end: whether it succeeded, and its output.
    fn run(&self, pod: &Value, name: &str) -> (bool, String) {
        let out = self.command(pod, name).output().expect("running");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// `text` with each of `swaps`' words replaced, in one pass (a replacement
/// is never replaced again), the longest word first where several match. A
/// word starts the text or follows a quote, `=`, `/` or a space, and ends it
/// or comes before `/`, a quote, `:` or a space.
fn replace_words(text: &str, swaps: &[(String, String)]) -> String {
    let starts = |c: char| matches!(c, '"' | '\'' | '=' | '/' | ' ');
    let ends = |c: char| matches!(c, '/' | '"' | '\'' | ':' | ' ' | '\n');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let at_start = text[..i].chars().next_back().is_none_or(starts);
        let found = at_start
            .then(|| {
                swaps
                    .iter()
                    .filter(|(from, _)| {
                        text[i..].starts_with(from.as_str())
                            && text[i + from.len()..].chars().next().is_none_or(ends)
                    })
                    .max_by_key(|(from, _)| from.len())
            })
            .flatten();
        match found {
            Some((from, to)) => {
                out.push_str(to);
                i += from.len();
            }
            None => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// A container's process.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to end by itself; its exit status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as a pod's deletion sends after the preStop pause.
    fn terminate(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{status}: {}", self.logs());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC probe: `grpc.health.v1.Health/Check` on the probe's port.
async fn grpc_probe(container: &Value, probe: &str) -> bool {
    let port = container[probe]["grpc"]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("{probe} is not a gRPC probe with a numeric port"));
    serving(&format!("127.0.0.1:{port}")).await
}

/// An HTTP probe: 2xx or 3xx on the probe's path and port (a name is looked
/// up among the container's ports).
fn http_probe(container: &Value, probe: &str) -> bool {
    let get = &container[probe]["httpGet"];
    let port = match get["port"].as_u64() {
        Some(n) => n,
        None => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == get["port"])
            .expect("the probe's named port")["containerPort"]
            .as_u64()
            .unwrap(),
    };
    http_get(
        &format!("127.0.0.1:{port}"),
        get["path"].as_str().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok_and(|a| (200..400).contains(&a.status))
}

/// Waits until `check` holds, as a probe retries; fails at once if the
/// container's process ended.
async fn eventually(what: &str, running: &mut Running, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("exited ({status}) before {what} held:\n{}", running.logs());
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held; logs:\n{}",
            running.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The port named `name` of a container.
fn port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn production_pods_run_as_rendered() {
    let db = TestDb::postgres().await;
    let redis = TestRedis::shared();
    let values = json!({
        "replicaCount": 2,
        "database": {"url": db.url()},
        "redis": {"url": redis.url},
        "config": {"redis_key_prefix": redis.prefix},
        // Free ports, so that pods on this one machine do not collide; the
        // defaults are checked where the chart is rendered.
        "service": {"port": free_port()},
        "metrics": {"port": free_port()},
        "polar": {"enabled": true, "webhookSecret": SECRET,
                  "port": free_port(), "metricsPort": free_port()},
    });
    let node = Node::new(render(values, &[]).expect("rendering"));
    let deployment = find(&node.manifests, "Deployment", "server");
    let server = container(deployment);

    // Before the pre-install Job, the server refuses an unmigrated database.
    let (ok, output) = node.run(pod_spec(deployment), "tollgate");
    assert!(!ok, "served on an unmigrated database: {output}");
    assert!(output.contains("run `tollgate migrate`"), "{output}");

    let job = find(&node.manifests, "Job", "migrate");
    let (ok, output) = node.run(pod_spec(job), "migrate");
    assert!(ok, "the migration Job failed: {output}");

    let mut replica = node.start(deployment, "tollgate");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        eventually(probe, &mut replica, async || {
            grpc_probe(server, probe).await
        })
        .await;
    }
    let metrics = format!("127.0.0.1:{}", port(server, "metrics"));
    let scrape = Scrape::fetch(&metrics);
    assert!(
        scrape
            .types
            .contains_key("tollgate_limiter_redis_call_seconds")
    );

    // helm test: the health check through the Service.
    let test = find(&node.manifests, "Pod", "test");
    let (ok, output) = node.run(&test["spec"], "health");
    assert!(ok, "helm test failed: {output}");

    let adapter = find(&node.manifests, "Deployment", "polar");
    let polar = container(adapter);
    let mut proxy = node.start(adapter, "tollgate-polar");
    for probe in ["livenessProbe", "readinessProbe"] {
        eventually(probe, &mut proxy, async || http_probe(polar, probe)).await;
    }
    // A delivery reaches the server with the admin token the chart made.
    let url = format!("http://127.0.0.1:{}/webhooks/polar", port(polar, "http"));
    let customer = unknown_customer_update("pc_contract");
    let answer = deliver_to(&url, SECRET, "msg_contract", &customer.to_string(), &[]);
    assert_eq!(answer.accepted(), "ignored", "{}", proxy.logs());
    let scrape = Scrape::fetch(&format!("127.0.0.1:{}", port(polar, "metrics")));
    assert_eq!(
        scrape.value(
            "tollgate_polar_server_call_seconds_count",
            &[("method", "ApplyCustomer"), ("code", "NotFound")]
        ),
        1.0
    );

    proxy.terminate();
    replica.terminate();
    assert!(!serving(&format!("127.0.0.1:{}", port(server, "grpc"))).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_pod_runs_as_rendered() {
    let values = json!({"service": {"port": free_port()}, "metrics": {"port": free_port()}});
    let node = Node::new(render(values, &[]).expect("rendering"));
    let deployment = find(&node.manifests, "Deployment", "server");
    let server = container(deployment);
    let mut replica = node.start(deployment, "tollgate");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        eventually(probe, &mut replica, async || {
            grpc_probe(server, probe).await
        })
        .await;
    }
    // The SQLite file is on the volume, where the PVC is mounted.
    let data = container(deployment)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "data")
        .expect("the data volume")["mountPath"]
        .as_str()
        .unwrap();
    assert!(node.local(data).join("tollgate.db").exists());
    let test = find(&node.manifests, "Pod", "test");
    let (ok, output) = node.run(&test["spec"], "health");
    assert!(ok, "helm test failed: {output}");
    replica.terminate();
}
