//! Another team's service: Python grpcio stubs generated from `proto/` with
//! grpcio-tools, calling the real binary on PostgreSQL.
use crate::helpers::{Server, TestDb, run_tollgate, venv};

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_works_against_the_server() {
    let db = TestDb::postgres().await;
    let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let verify = run_tollgate(&db, &["admin", "create-credential", "--scope", "verify"])
        .trim()
        .to_owned();
    let server = Server::start(&["--database-url", db.url()]);
    let project = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(venv().join("bin/python"))
        .arg(format!("{project}/tests/python/e2e_client.py"))
        .args(["--target", &server.target()])
        .args(["--admin-token", &admin, "--verify-token", &verify])
        .args(["--proto-dir", &format!("{project}/proto")])
        .output()
        .expect("running the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary
        .strip_prefix("python e2e: ")
        .and_then(|s| s.strip_suffix(" checks passed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected summary: {summary}"));
    assert!(passed >= 134, "only {passed} checks ran");
    server.stop();
}
