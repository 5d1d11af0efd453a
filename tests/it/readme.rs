//! The README's grpcurl walkthrough, run exactly as written against the real
//! binary on the embedded default, so it cannot drift from the server.
use std::{path::Path, process::Command, time::Duration};

use crate::helpers::{Server, free_port, venv, wait_serving};

fn shell_blocks(readme: &str) -> Vec<String> {
    readme
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn readme_opens_with_the_two_commands() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first = &shell_blocks(&readme)[0];
    let commands: Vec<&str> = first
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["cargo run -- serve", "cargo test"]);
}

/// The README's first command, typed as written at the repository root: the
/// server it starts answers a health check. Only the port and the data
/// directory differ, through the environment, so a server of the
/// developer's own on 50051 is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn readme_first_command_serves() {
    use std::os::unix::process::CommandExt;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first = shell_blocks(&readme)[0]
        .lines()
        .next()
        .and_then(|l| l.split('#').next())
        .unwrap()
        .trim()
        .to_owned();
    assert!(first.starts_with("cargo run"), "{first:?}");
    let data = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = data.path().join("output.log");
    let mut bash = Command::new("bash");
    // A newcomer's shell: none of our settings, and none of the variables
    // cargo sets for a test (build scripts that track CARGO_MANIFEST_DIR
    // would otherwise rebuild, and the next plain `cargo run` again).
    for (key, _) in std::env::vars().filter(|(k, _)| {
        k.starts_with("TOLLGATE_")
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO",
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_str())
    }) {
        bash.env_remove(key);
    }
    let output = std::fs::File::create(&log).unwrap();
    let child = bash
        .args(["-c", &first])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TOLLGATE_LISTEN", &addr)
        .env("TOLLGATE_DATA_DIR", data.path().join("data"))
        .stdin(std::process::Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        // A group of its own, so cargo and the server it runs stop together.
        .process_group(0)
        .spawn()
        .expect("bash");
    let group = Group(Some(child));
    // Built already by this test run, so only a stale build waits long.
    let up = wait_serving(&addr, Duration::from_secs(300)).await;
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "`{first}` did not serve on {addr}:\n{}", logs());
    group.terminate();
    assert!(
        logs().contains("tollgate serving"),
        "the server's log is missing:\n{}",
        logs()
    );
}

/// A process group: sent SIGTERM by `terminate`, SIGKILL if dropped first.
struct Group(Option<std::process::Child>);

impl Group {
    fn signal(child: &std::process::Child, signal: &str) {
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args([signal, "--", &group]).status();
    }

    fn terminate(mut self) {
        let mut child = self.0.take().expect("running");
        Self::signal(&child, "-TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            Self::signal(&child, "-KILL");
            let _ = child.wait();
        }
    }
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let walkthrough = shell_blocks(&readme)[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tollgate")).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("bash");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TOLLGATE_")) {
        bash.env_remove(key);
    }
    let out = bash
        .args(["-euo", "pipefail", "-c", &walkthrough])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("ADDR", server.target())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "tollgate.v1.Plans",
        "plan: plan_",
        "tenant: ten_",
        "tg_live_",
        "KEY_STATUS_REVOKED",
        "\"code\": \"VALID\"",
        "\"httpStatus\": 200",
        "X-RateLimit-Remaining",
        "\nKEY_REVOKED\n",
        "\n750\n",
        "\nTENANT_STATUS_ACTIVE\n",
        "\nINVOICE_STATUS_DRAFT\nUSD\n",
        "\nVALID 200 9999\n",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    // It ends with the Verify answer the README shows: the same fields, the
    // same headers, the same status.
    let last = &stdout[stdout.rfind("\n{\n").map_or(0, |i| i + 1)..];
    let actual: serde_json::Value = serde_json::from_str(last).expect("a JSON answer last");
    let shown: serde_json::Value = serde_json::from_str(
        readme
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the README shows the answer"),
    )
    .unwrap();
    let keys = |v: &serde_json::Value, field: &str| -> Vec<String> {
        let object = if field.is_empty() { v } else { &v[field] };
        object.as_object().unwrap().keys().cloned().collect()
    };
    for field in ["", "rateLimit", "quota", "headers"] {
        assert_eq!(
            keys(&actual, field),
            keys(&shown, field),
            "{field:?} differs"
        );
    }
    for same in ["valid", "code", "httpStatus", "features", "planSlug"] {
        assert_eq!(actual[same], shown[same], "{same} differs");
    }
    assert_eq!(actual["quota"]["used"], "2");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_polar_delivery_runs_as_written() {
    use crate::{
        helpers::{TestDb, run_tollgate},
        polar::{Adapter, SECRET},
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = shell_blocks(&readme)[2].clone();
    assert!(
        example.contains("webhook-signature"),
        "the Polar example moved"
    );
    let db = TestDb::postgres().await;
    let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let server = Server::start(&["--database-url", db.url()]);
    let adapter = Adapter::start(&server.target(), &admin, SECRET);
    let run = |secret: &str| {
        let mut bash = Command::new("bash");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TOLLGATE_")) {
            bash.env_remove(key);
        }
        bash.args(["-euo", "pipefail", "-c", &example])
            .env("ADAPTER", adapter.addr.to_string())
            .env("TOLLGATE_POLAR_WEBHOOK_SECRET", secret)
            .output()
            .expect("bash")
    };
    let out = run(SECRET);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 202 Accepted"), "{stdout}");
    assert!(stdout.contains("{\"outcome\":\"pending\"}"), "{stdout}");
    // Signed with another secret, the same example is refused.
    let refused = run("polar_whs_not_the_endpoints");
    assert!(
        String::from_utf8_lossy(&refused.stdout).starts_with("HTTP/1.1 403"),
        "{refused:?}"
    );
}

/// The README's `helm install` commands, with their `--set` values read by
/// Helm's own parser: the chart takes them, and the Secrets they name are
/// the ones the README creates.
#[test]
fn readme_helm_installs_render() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut installs = 0;
    for block in shell_blocks(&readme) {
        let block = block.replace("\\\n", " ");
        let created: Vec<(String, String)> = block
            .lines()
            .filter_map(|l| l.strip_prefix("kubectl create secret generic "))
            .map(|rest| {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap().to_owned();
                let key = words
                    .find_map(|w| w.strip_prefix("--from-literal="))
                    .and_then(|kv| kv.split_once('='))
                    .unwrap()
                    .0
                    .to_owned();
                (name, key)
            })
            .collect();
        for install in block.lines().filter(|l| l.starts_with("helm install ")) {
            installs += 1;
            let words: Vec<&str> = install.split_whitespace().collect();
            let sets: Vec<&str> = words
                .windows(2)
                .filter(|w| w[0] == "--set")
                .map(|w| w[1])
                .collect();
            let manifests =
                crate::chart::render_sets(&sets).unwrap_or_else(|e| panic!("{install}\n{e}"));
            let server = manifests
                .iter()
                .find(|m| m["kind"] == "Deployment")
                .expect("a Deployment");
            let env = server["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap();
            for e in env {
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                    let (name, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                    let made_by_chart = manifests
                        .iter()
                        .any(|m| m["kind"] == "Secret" && m["metadata"]["name"] == name);
                    assert!(
                        made_by_chart || created.contains(&(name.to_owned(), key.to_owned())),
                        "{install}: the pods read Secret {name} key {key}, which nothing makes"
                    );
                }
            }
        }
    }
    assert_eq!(installs, 2, "the embedded and the production install");
}
