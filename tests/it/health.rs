//! `tollgate health`, as a container health check or the chart's `helm test`
//! pod runs it: exit 0 only on SERVING, one line, and an answer within its
//! one-second timeout whatever is (or is not) at the address.
use std::{
    process::Output,
    time::{Duration, Instant},
};

use tonic_health::ServingStatus;

use crate::helpers::{Server, free_port, tollgate};

/// Runs `tollgate health` with `args`; the output and how long it took.
fn health(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = tollgate()
        .arg("health")
        .args(args)
        .output()
        .expect("running tollgate health");
    (out, started.elapsed())
}

fn lines(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Within the command's own one-second timeout, plus a process start.
const PROMPT: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread")]
async fn exits_zero_only_while_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let addr = server.target();

    let (out, took) = health(&["--addr", &addr]);
    let (stdout, stderr) = lines(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, format!("{addr}: SERVING\n"));
    assert!(took < PROMPT, "{took:?}");

    let (out, _) = health(&["--addr", &addr, "--service", "tollgate.v1.Verify"]);
    assert!(out.status.success(), "{:?}", lines(&out));
    // A service the server does not have is not healthy.
    let (out, _) = health(&["--addr", &addr, "--service", "no.such.Service"]);
    let (stdout, stderr) = lines(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("no.such.Service"), "{stderr}");

    server.stop();
    let (out, took) = health(&["--addr", &addr]);
    assert!(!out.status.success(), "a stopped server: {:?}", lines(&out));
    assert!(took < PROMPT, "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_serving_is_a_failure() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let out = tokio::task::spawn_blocking(move || health(&["--addr", &addr]).0)
        .await
        .unwrap();
    let (stdout, stderr) = lines(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("NOT_SERVING"), "{stdout}{stderr}");
}

#[test]
fn a_wrong_or_silent_address_fails_within_a_second() {
    // Nothing listens; a listener that accepts and never answers; not an
    // address at all.
    let closed = format!("127.0.0.1:{}", free_port());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    for addr in [closed.as_str(), silent_addr.as_str(), "not an address"] {
        let (out, took) = health(&["--addr", addr]);
        let (stdout, stderr) = lines(&out);
        assert!(!out.status.success(), "{addr}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{addr}: one line: {stderr}");
        assert!(took < PROMPT, "{addr}: {took:?}");
    }
    drop(silent);
}
