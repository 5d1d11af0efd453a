//! TLS everywhere (finding 8): the gRPC server over TLS (its certificate
//! read again when the files change; client certificates when a client CA
//! is set), its clients (`tollgate health`, tollgate-polar) over TLS for
//! https:// targets and never in the clear, and rediss://. Before, the
//! server had no TLS, `tollgate-polar --server https://…` spoke plaintext
//! HTTP/2 (its admin token in clear) and rediss:// passed validation but
//! could not connect. Certificates are made in the test (rcgen); the
//! clients are grpcurl and the real binaries.
use std::time::{Duration, Instant};

use tollgate::grpc::pb::{VerifyCode, verify_client::VerifyClient};

use crate::{
    helpers::{InProcess, Pki, Server, TestDb, TestRedis, grpcurl, run_tollgate, tollgate},
    polar::{Adapter, SECRET},
    verify::{call, setup},
};

/// The real server over TLS with `pki`'s server certificate, and more
/// settings from `env`.
async fn tls_server(pki: &Pki, env: &[(&str, String)]) -> (Server, TestDb) {
    let db = TestDb::sqlite().await;
    let server_cert = pki.server();
    let mut all = vec![
        (
            "TOLLGATE_TLS_CERT_FILE",
            server_cert.cert.display().to_string(),
        ),
        (
            "TOLLGATE_TLS_KEY_FILE",
            server_cert.key.display().to_string(),
        ),
    ];
    all.extend(env.iter().cloned());
    let server = Server::start_env(&["--database-url", db.url()], &all);
    (server, db)
}

/// grpcurl's health check of `addr` with `args`: whether it said SERVING.
fn grpcurl_health(addr: &str, args: &[&str]) -> Result<(), String> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-max-time", "5", addr, "grpc.health.v1.Health/Check"]);
    let out = grpcurl(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("SERVING") {
        Ok(())
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `tollgate health --addr <addr> <args>`: whether it exited 0, and what it said.
fn tollgate_health(addr: &str, args: &[&str]) -> (bool, String) {
    let out = tollgate()
        .args(["health", "--addr", addr, "--timeout-millis", "3000"])
        .args(args)
        .output()
        .expect("tollgate health");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn the_server_speaks_tls_to_grpcurl_and_tollgate_health() {
    let pki = Pki::new("server");
    let (server, _db) = tls_server(&pki, &[]).await;
    let addr = server.target();
    let ca = pki.ca_file().display().to_string();
    grpcurl_health(&addr, &["-cacert", &ca]).expect("grpcurl over TLS");
    assert!(
        grpcurl_health(&addr, &["-plaintext"]).is_err(),
        "no plaintext on a TLS port"
    );
    assert!(
        grpcurl_health(&addr, &[]).is_err(),
        "a CA the client does not trust is refused"
    );

    let https = format!("https://{addr}");
    let (ok, said) = tollgate_health(&https, &["--ca-file", &ca]);
    assert!(ok, "tollgate health over TLS: {said}");
    let (ok, said) = tollgate_health(
        &https,
        &["--ca-file", &ca, "--tls-server-name", "localhost"],
    );
    assert!(ok, "by name: {said}");
    let (ok, said) = tollgate_health(&https, &[]);
    assert!(!ok, "the system's roots do not hold the test CA: {said}");
    let (ok, said) = tollgate_health(&addr, &[]);
    assert!(!ok, "plaintext to a TLS port fails: {said}");
    let (ok, said) = tollgate_health(&addr, &["--ca-file", &ca]);
    assert!(
        !ok && said.contains("https://"),
        "TLS settings with a plaintext target are refused: {said}"
    );
}

/// An https:// target that speaks plaintext is an error, never a downgrade:
/// `tollgate health` fails, and tollgate-polar is not ready and sends
/// nothing (its admin token stays unsent).
#[tokio::test]
async fn an_https_target_in_the_clear_is_refused_not_downgraded() {
    let pki = Pki::new("downgrade");
    let db = TestDb::sqlite().await;
    let token = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let plain = Server::start(&["--database-url", db.url()]);
    let https = format!("https://{}", plain.target());
    let ca = pki.ca_file().display().to_string();
    let (ok, said) = tollgate_health(&https, &["--ca-file", &ca]);
    assert!(!ok, "https:// to a plaintext server: {said}");

    let adapter = Adapter::start_env(
        &plain.target(),
        &token,
        SECRET,
        &[
            ("TOLLGATE_POLAR_SERVER", https.clone()),
            ("TOLLGATE_POLAR_CA_FILE", ca.clone()),
        ],
    );
    assert_eq!(
        adapter.get("/readyz"),
        503,
        "not ready over a failed TLS handshake"
    );
    let plain_ready = Adapter::start(&plain.target(), &token, SECRET);
    assert_eq!(
        plain_ready.get("/readyz"),
        200,
        "http:// in the clear still works"
    );
}

/// tollgate-polar reaches a TLS server with `--ca-file`, and with a client
/// certificate when the server asks for one.
#[tokio::test]
async fn tollgate_polar_reaches_a_tls_server() {
    let pki = Pki::new("polar");
    let client = pki.issue("polar", &["tollgate-polar"]);
    let ca = pki.ca_file().display().to_string();
    let (server, db) = tls_server(&pki, &[("TOLLGATE_TLS_CLIENT_CA_FILE", ca.clone())]).await;
    let token = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let https = format!("https://{}", server.target());
    let with_cert = Adapter::start_env(
        &server.target(),
        &token,
        SECRET,
        &[
            ("TOLLGATE_POLAR_SERVER", https.clone()),
            ("TOLLGATE_POLAR_CA_FILE", ca.clone()),
            (
                "TOLLGATE_POLAR_CLIENT_CERT_FILE",
                client.cert.display().to_string(),
            ),
            (
                "TOLLGATE_POLAR_CLIENT_KEY_FILE",
                client.key.display().to_string(),
            ),
        ],
    );
    assert_eq!(with_cert.get("/readyz"), 200, "ready over mutual TLS");
    let without = Adapter::start_env(
        &server.target(),
        &token,
        SECRET,
        &[
            ("TOLLGATE_POLAR_SERVER", https),
            ("TOLLGATE_POLAR_CA_FILE", ca),
        ],
    );
    assert_eq!(
        without.get("/readyz"),
        503,
        "no client certificate, no call"
    );
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let pki = Pki::new("mtls");
    let client = pki.issue("client", &["client"]);
    let stranger = Pki::new("stranger").issue("stranger", &["client"]);
    let ca = pki.ca_file().display().to_string();
    let (server, _db) = tls_server(&pki, &[("TOLLGATE_TLS_CLIENT_CA_FILE", ca.clone())]).await;
    let addr = server.target();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    grpcurl_health(&addr, &["-cacert", &ca, "-cert", &cert, "-key", &key])
        .expect("a client certificate of the CA");
    assert!(
        grpcurl_health(&addr, &["-cacert", &ca]).is_err(),
        "no client certificate"
    );
    let (scert, skey) = (
        stranger.cert.display().to_string(),
        stranger.key.display().to_string(),
    );
    assert!(
        grpcurl_health(&addr, &["-cacert", &ca, "-cert", &scert, "-key", &skey]).is_err(),
        "a client certificate of another CA"
    );
    let https = format!("https://{addr}");
    let (ok, said) = tollgate_health(
        &https,
        &["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key],
    );
    assert!(ok, "tollgate health with a client certificate: {said}");
}

/// New certificate files are served from the next handshake a second or
/// more after they changed, without a restart; files that do not load
/// leave the previous certificate in place.
#[tokio::test]
async fn the_certificate_is_read_again_when_its_files_change() {
    let first = Pki::new("first");
    let (server, _db) = tls_server(&first, &[]).await;
    let addr = server.target();
    let first_ca = first.ca_file().display().to_string();
    grpcurl_health(&addr, &["-cacert", &first_ca]).expect("the first certificate");

    // Half a renewal: a certificate whose key is not there yet.
    let second = Pki::new("second");
    let renewed = second.server();
    let files = first.files("server");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    grpcurl_health(&addr, &["-cacert", &first_ca])
        .expect("a certificate without its key is not taken: the previous one is served");

    std::fs::copy(&renewed.key, &files.key).unwrap();
    let second_ca = second.ca_file().display().to_string();
    let changed = Instant::now();
    while let Err(e) = grpcurl_health(&addr, &["-cacert", &second_ca]) {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the renewed certificate is served: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "renewed certificate served {:.0} ms after its key was written",
        changed.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        grpcurl_health(&addr, &["-cacert", &first_ca]).is_err(),
        "the old one is not"
    );
}

/// rediss://: the limiter and the change channel on a Redis that speaks
/// only TLS, trusting the CA of `redis_ca_file`.
#[tokio::test]
async fn rediss_reaches_a_tls_redis_with_a_ca_file() {
    let pki = Pki::new("redis");
    let redis = TestRedis::own_tls(&pki.server(), &pki.ca_file());
    let ca = pki.ca_file();
    let server = InProcess::start_with(TestDb::postgres().await, Some(redis), move |c| {
        c.redis_ca_file = ca;
    })
    .await;
    let (secret, _) = setup(&server, 6_000, 100, 3).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let answer = VerifyClient::new(server.channel())
            .verify(server.verify(call(&secret, Some(1), &[])))
            .await
            .expect("verify over rediss://")
            .into_inner();
        codes.push(VerifyCode::try_from(answer.code).unwrap());
    }
    assert_eq!(
        codes,
        [
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::QuotaExceeded
        ],
        "the hard cap of 3, kept in the TLS Redis"
    );
}

/// Without the CA, rediss:// to a server whose certificate the system does
/// not trust stops the server at start, saying so.
#[tokio::test]
async fn rediss_without_a_trusted_certificate_does_not_start() {
    let pki = Pki::new("untrusted-redis");
    let redis = TestRedis::own_tls(&pki.server(), &pki.ca_file());
    let db = TestDb::postgres().await;
    let out = tollgate()
        .args([
            "--database-url",
            db.url(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--redis-url", &redis.url])
        .output()
        .expect("tollgate serve");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Redis"), "{said}");
}
