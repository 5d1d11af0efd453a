//! Idle connections (#13, finding 3): on the gRPC port and on
//! `tollgate-polar`, connections that send one byte or half a preface do not
//! stop a valid call, are closed once the handshake timeout passes, and a
//! listener holds no more than its connection cap.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::{
    helpers::{Server, TestDb, serving},
    polar::{Adapter, SECRET},
};

/// `n` connections to `addr`, each having sent `first` (maybe nothing).
fn idle(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connecting");
            s.write_all(first).expect("writing");
            s
        })
        .collect()
}

/// Whether the server has closed `s` (end of stream or a reset) by `until`.
fn closed_by(s: &mut TcpStream, until: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // The server's SETTINGS (gRPC) or nothing yet: keep reading.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn all_closed_within(conns: &mut [TcpStream], within: Duration) -> usize {
    let until = Instant::now() + within;
    conns
        .iter_mut()
        .map(|s| closed_by(s, until))
        .filter(|c| *c)
        .count()
}

/// A mix: nothing, one byte, half the HTTP/2 preface or a request line.
fn three_hundred(addr: SocketAddr, half: &[u8]) -> Vec<TcpStream> {
    let mut conns = idle(addr, 100, b"");
    conns.extend(idle(addr, 100, b"P"));
    conns.extend(idle(addr, 100, half));
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_stop_a_grpc_call_nor_stay_open() {
    let db = TestDb::sqlite().await;
    let server = Server::start_env(
        &["--database-url", db.url()],
        &[("TOLLGATE_HANDSHAKE_TIMEOUT_MILLIS", "1000".to_owned())],
    );
    let mut conns = three_hundred(server.addr, b"PRI * HTTP/2.0\r\n");
    let started = Instant::now();
    assert!(
        serving(&server.target()).await,
        "a health check among 300 idle connections"
    );
    eprintln!(
        "with 300 idle connections open, a health check took {:?}",
        started.elapsed()
    );
    let closed = all_closed_within(&mut conns, Duration::from_secs(10));
    assert_eq!(
        closed, 300,
        "every idle connection is closed after the handshake timeout"
    );
    assert!(serving(&server.target()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_holds_no_more_than_its_cap() {
    let db = TestDb::sqlite().await;
    let server = Server::start_env(
        &["--database-url", db.url()],
        &[
            ("TOLLGATE_MAX_CONNECTIONS", "20".to_owned()),
            ("TOLLGATE_HANDSHAKE_TIMEOUT_MILLIS", "1000".to_owned()),
        ],
    );
    let mut held = idle(server.addr, 20, b"P");
    // One more is closed as soon as it is accepted.
    let mut over = idle(server.addr, 1, b"");
    assert_eq!(all_closed_within(&mut over, Duration::from_millis(900)), 1);
    assert_eq!(all_closed_within(&mut held, Duration::from_secs(10)), 20);
    // Once they are gone, calls are served again.
    assert!(serving(&server.target()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_stop_the_adapter_nor_stay_open() {
    // The adapter answers /healthz without asking the server.
    let adapter = Adapter::start_env(
        "127.0.0.1:1",
        "token",
        SECRET,
        &[
            ("TOLLGATE_POLAR_HANDSHAKE_TIMEOUT_MILLIS", "1000".to_owned()),
            ("TOLLGATE_POLAR_IDLE_TIMEOUT_MILLIS", "1500".to_owned()),
        ],
    );
    let mut conns = three_hundred(
        adapter.addr,
        b"POST /webhooks/polar HTTP/1.1\r\nHost: x\r\n",
    );
    let started = Instant::now();
    assert_eq!(adapter.get("/healthz"), 200);
    eprintln!(
        "with 300 idle connections open, GET /healthz took {:?}",
        started.elapsed()
    );
    let closed = all_closed_within(&mut conns, Duration::from_secs(10));
    assert_eq!(closed, 300, "every idle connection is closed");

    // A keep-alive connection left idle after an answer is closed too.
    let mut kept = TcpStream::connect(adapter.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(closed_by(
        &mut kept,
        Instant::now() + Duration::from_secs(10)
    ));
    assert!(idle_since.elapsed() >= Duration::from_millis(1400));
    assert_eq!(adapter.get("/healthz"), 200);
}
