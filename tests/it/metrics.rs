//! `/metrics` as Prometheus reads it: the real binaries scraped over HTTP,
//! the text parsed by the Prometheus project's Python parser, and counters
//! that moved by exactly the calls made. Every metric the chart's Grafana
//! dashboard queries is in a real scrape.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tollgate::grpc::pb::{
    CreateKeyRequest, Key, RevokeKeyRequest, VerifyCode, VerifyRequest, keys_client::KeysClient,
    verify_client::VerifyClient,
};
use tonic::transport::Channel;

use crate::{
    helpers::{
        Server, TestDb, TestRedis, free_port, http_get, python_script, run_tollgate, with_token,
    },
    polar::{Adapter, SECRET, unknown_customer_update},
    verify::{call, setup_on},
};

/// One parsed scrape.
pub struct Scrape {
    /// Family name → its type.
    pub types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// `GET /metrics` on `addr`, parsed by prometheus_client's OpenMetrics
    /// parser (the test fails if it does not parse).
    pub fn fetch(addr: &str) -> Self {
        let answer = http_get(addr, "/metrics", Duration::from_secs(10)).expect("GET /metrics");
        let head = &answer.head;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        Self::parse(&answer.body)
    }

    fn parse(text: &str) -> Self {
        let out = python_script("metrics_parse.py", &[], text.as_bytes());
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for family in parsed["families"].as_array().unwrap() {
            types.insert(
                family["name"].as_str().unwrap().to_owned(),
                family["type"].as_str().unwrap().to_owned(),
            );
            for s in family["samples"].as_array().unwrap() {
                let labels = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                samples.push((
                    s["name"].as_str().unwrap().to_owned(),
                    labels,
                    s["value"].as_f64().unwrap(),
                ));
            }
        }
        Self { types, samples }
    }

    /// The sum of the samples named `name` that carry all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// The metric names the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/tollgate/dashboards/tollgate.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 8,
        "the dashboard has {} queries",
        exprs.len()
    );
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = ["grpc_server_", "tollgate_"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min()
        {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

async fn verify_code(channel: &Channel, token: &str, request: VerifyRequest) -> VerifyCode {
    let answer = VerifyClient::new(channel.clone())
        .verify(with_token(request, token))
        .await
        .expect("verify")
        .into_inner();
    VerifyCode::try_from(answer.code).unwrap()
}

/// Production (PostgreSQL and Redis), with the Polar adapter in front:
/// counters move by exactly the calls of each outcome, and the dashboard's
/// every metric is there.
#[tokio::test(flavor = "multi_thread")]
async fn counters_move_by_exactly_the_calls_made() {
    let db = TestDb::postgres().await;
    let redis = TestRedis::shared();
    let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let verifier = run_tollgate(&db, &["admin", "create-credential", "--scope", "verify"])
        .trim()
        .to_owned();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_env(
        &["--database-url", db.url()],
        &[
            ("TOLLGATE_REDIS_URL", redis.url.clone()),
            ("TOLLGATE_REDIS_KEY_PREFIX", redis.prefix.clone()),
            ("TOLLGATE_REDIS_TIMEOUT_MILLIS", "2000".into()),
            ("TOLLGATE_METRICS_LISTEN", metrics_addr.clone()),
            // One flush at start, the next long after the test: the units
            // admitted stay unwritten, exactly.
            ("TOLLGATE_USAGE_FLUSH_MILLIS", "600000".into()),
        ],
    );
    let channel = server.channel().await;
    let before = Scrape::fetch(&metrics_addr);
    // A hard cap of 4, and a bucket of 2 that refills once a minute.
    let (capped, _, tenant) = setup_on(channel.clone(), &admin, 6000, 100, 4, 1).await;
    let (bursty, _, _) = setup_on(channel.clone(), &admin, 1, 2, 1000, 1).await;
    let leaked = KeysClient::new(channel.clone())
        .create_key(with_token(
            CreateKeyRequest {
                key: Some(Key {
                    tenant_id: tenant,
                    name: "leaked".into(),
                    ..Key::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    KeysClient::new(channel.clone())
        .revoke_key(with_token(
            RevokeKeyRequest {
                id: leaked.key.unwrap().id,
            },
            &admin,
        ))
        .await
        .unwrap();

    let mut calls = Vec::new();
    let mut make = |n: usize, request: VerifyRequest, answer: VerifyCode| {
        calls.extend(std::iter::repeat_n((request, answer), n));
    };
    make(4, call(&capped, None, &[]), VerifyCode::Valid);
    make(3, call(&capped, None, &[]), VerifyCode::QuotaExceeded);
    make(
        2,
        call(&capped, None, &["model:none"]),
        VerifyCode::FeatureNotInPlan,
    );
    make(2, call(&bursty, None, &[]), VerifyCode::Valid);
    make(3, call(&bursty, None, &[]), VerifyCode::RateLimited);
    make(2, call(&leaked.secret, None, &[]), VerifyCode::KeyRevoked);
    for i in 0..5 {
        make(
            1,
            // Shaped like keys issued before checksums, so that they are
            // looked up (a made-up checksummed one never reaches the cache).
            call(
                &format!("tg_live_{}", (i + 1).to_string().repeat(44)),
                None,
                &[],
            ),
            VerifyCode::KeyNotFound,
        );
    }
    let mut expected: BTreeMap<VerifyCode, u32> = BTreeMap::new();
    for (_, answer) in &calls {
        *expected.entry(*answer).or_default() += 1;
    }
    for (request, wanted) in calls.iter().cloned() {
        assert_eq!(verify_code(&channel, &verifier, request).await, wanted);
    }
    // Two calls the server refuses: no key, and no credential.
    let invalid = VerifyClient::new(channel.clone())
        .verify(with_token(call("", None, &[]), &verifier))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let anonymous = VerifyClient::new(channel.clone())
        .verify(call(&capped, None, &[]))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    let after = Scrape::fetch(&metrics_addr);
    for (name, kind) in [
        ("grpc_server_handled", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
        ("tollgate_verify_decisions", "counter"),
        ("tollgate_limiter_redis_call_seconds", "histogram"),
        ("tollgate_usage_unflushed_units", "gauge"),
        ("tollgate_changes_received", "counter"),
    ] {
        assert_eq!(
            after.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }

    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    for n in 1..=10 {
        let code = VerifyCode::try_from(n).unwrap();
        assert_eq!(
            moved(
                "tollgate_verify_decisions_total",
                &[("code", code.as_str_name())]
            ),
            f64::from(expected.get(&code).copied().unwrap_or(0)),
            "{code:?}"
        );
    }
    let verify = [
        ("grpc_type", "unary"),
        ("grpc_service", "tollgate.v1.Verify"),
        ("grpc_method", "Verify"),
    ];
    let with_code = |code| {
        let mut labels = verify.to_vec();
        labels.push(("grpc_code", code));
        labels
    };
    let answered = calls.len() as f64;
    assert_eq!(
        moved("grpc_server_handled_total", &with_code("OK")),
        answered
    );
    assert_eq!(
        moved("grpc_server_handled_total", &with_code("InvalidArgument")),
        1.0
    );
    assert_eq!(
        moved("grpc_server_handled_total", &with_code("Unauthenticated")),
        1.0
    );
    assert_eq!(
        moved("grpc_server_handling_seconds_count", &verify),
        answered + 2.0
    );
    // The admin calls above: three plans' worth of setup, all OK.
    assert!(
        moved(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "tollgate.v1.Plans"),
                ("grpc_method", "CreatePlan"),
                ("grpc_code", "OK")
            ]
        ) == 2.0
    );
    // Six units admitted on a metered resource, none written yet.
    assert_eq!(after.value("tollgate_usage_unflushed_units", &[]), 6.0);
    assert!(after.value("tollgate_usage_flush_seconds_count", &[]) >= 1.0);
    assert_eq!(moved("tollgate_usage_flush_failures_total", &[]), 0.0);
    assert!(moved("tollgate_limiter_redis_call_seconds_count", &[]) >= 6.0);
    assert_eq!(moved("tollgate_limiter_redis_over_budget_total", &[]), 0.0);
    assert_eq!(moved("tollgate_limiter_fail_open_calls_total", &[]), 0.0);
    // Four secrets' first calls were misses; every other call a hit.
    assert!(moved("tollgate_key_cache_misses_total", &[]) >= 8.0);
    assert!(moved("tollgate_key_cache_hits_total", &[]) >= 10.0);
    assert_eq!(
        moved("tollgate_key_cache_misses_total", &[]) + moved("tollgate_key_cache_hits_total", &[]),
        answered
    );
    // The revocation came back on the change channel.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Scrape::fetch(&metrics_addr).value("tollgate_changes_received_total", &[])
        < before.value("tollgate_changes_received_total", &[]) + 1.0
    {
        assert!(Instant::now() < deadline, "no change message counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(moved("tollgate_changes_reconnects_total", &[]), 0.0);

    // The adapter: one delivery of each kind of answer.
    let adapter_metrics = format!("127.0.0.1:{}", free_port());
    let adapter = Adapter::start_env(
        &server.target(),
        &admin,
        SECRET,
        &[("TOLLGATE_POLAR_METRICS_LISTEN", adapter_metrics.clone())],
    );
    let customer = unknown_customer_update("pc_unknown");
    assert_eq!(adapter.deliver("msg_m1", &customer).accepted(), "ignored");
    let order =
        json!({"type": "order.paid", "timestamp": "2026-11-02T00:00:00Z", "data": {"id": 1}});
    assert_eq!(adapter.deliver("msg_m2", &order).accepted(), "ignored");
    let tampered = adapter.deliver_with(SECRET, "msg_m3", &order.to_string(), &["--tamper"]);
    assert_eq!(tampered.status, 403);
    let polar = Scrape::fetch(&adapter_metrics);
    for (event_type, outcome, status) in [
        ("customer.updated", "ignored", "202"),
        ("other", "ignored", "202"),
        ("unverified", "refused", "403"),
    ] {
        assert_eq!(
            polar.value(
                "tollgate_polar_deliveries_total",
                &[
                    ("event_type", event_type),
                    ("outcome", outcome),
                    ("status", status)
                ]
            ),
            1.0,
            "{event_type} {outcome} {status}"
        );
    }
    assert_eq!(
        polar.value(
            "tollgate_polar_server_call_seconds_count",
            &[("method", "ApplyCustomer"), ("code", "NotFound")]
        ),
        1.0
    );

    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| !after.has(name) && !polar.has(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no scrape has: {missing:?}"
    );
    server.stop();
}

/// The embedded default: no Redis metrics, and admitted units go back to 0
/// once flushed.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_usage_is_unwritten_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let token = "embedded-admin-token-0123456789abcdef".to_owned();
    let mut cmd = crate::helpers::tollgate();
    cmd.current_dir(dir.path())
        .env("TOLLGATE_METRICS_LISTEN", &metrics_addr)
        .env("TOLLGATE_ADMIN_TOKEN", &token)
        .env("TOLLGATE_USAGE_FLUSH_MILLIS", "200");
    let server = Server::spawn(cmd, &[]);
    let channel = server.channel().await;
    let (secret, _, _) = setup_on(channel.clone(), &token, 6000, 100, 1000, 2).await;
    for _ in 0..3 {
        assert_eq!(
            verify_code(&channel, &token, call(&secret, None, &[])).await,
            VerifyCode::Valid
        );
    }
    let scrape = Scrape::fetch(&metrics_addr);
    assert!(
        !scrape
            .types
            .contains_key("tollgate_limiter_redis_call_seconds")
    );
    assert_eq!(
        scrape.value("tollgate_verify_decisions_total", &[("code", "VALID")]),
        3.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::fetch(&metrics_addr);
        if scrape.value("tollgate_usage_unflushed_units", &[]) == 0.0 {
            assert!(scrape.value("tollgate_usage_flush_seconds_count", &[]) >= 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "3 units never flushed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}

/// A Redis that hangs, then goes away: the calls over the budget, the calls
/// decided on the fallback and the time spent failing open are counted.
#[tokio::test(flavor = "multi_thread")]
async fn redis_trouble_is_counted() {
    let db = TestDb::postgres().await;
    let mut redis = TestRedis::own();
    let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_env(
        &["--database-url", db.url()],
        &[
            ("TOLLGATE_REDIS_URL", redis.url.clone()),
            ("TOLLGATE_REDIS_TIMEOUT_MILLIS", "100".into()),
            ("TOLLGATE_METRICS_LISTEN", metrics_addr.clone()),
            ("TOLLGATE_USAGE_FLUSH_MILLIS", "200".into()),
        ],
    );
    let channel = server.channel().await;
    let (secret, _, _) = setup_on(channel.clone(), &admin, 6000, 100, 1000, 2).await;
    assert_eq!(
        verify_code(&channel, &admin, call(&secret, None, &[])).await,
        VerifyCode::Valid
    );
    let scrape = Scrape::fetch(&metrics_addr);
    assert_eq!(
        scrape.value("tollgate_limiter_fail_open_calls_total", &[]),
        0.0
    );
    assert_eq!(
        scrape.value("tollgate_limiter_redis_over_budget_total", &[]),
        0.0
    );

    // Frozen: the next call waits out the budget, then is admitted on the
    // fallback; so is every call until Redis answers again.
    redis.freeze(true);
    for _ in 0..5 {
        assert_eq!(
            verify_code(&channel, &admin, call(&secret, None, &[])).await,
            VerifyCode::Valid
        );
    }
    let frozen = Scrape::fetch(&metrics_addr);
    assert_eq!(
        frozen.value("tollgate_limiter_fail_open_calls_total", &[]),
        5.0
    );
    assert!(frozen.value("tollgate_limiter_redis_over_budget_total", &[]) >= 1.0);
    // Time failing open grows while it lasts, at every probe.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Scrape::fetch(&metrics_addr).value("tollgate_limiter_fail_open_seconds_total", &[]) < 0.5
    {
        assert!(Instant::now() < deadline, "failing open was not timed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.freeze(false);
    redis.stop();
    redis.restart();
    // Back on Redis: calls are decided there again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = Scrape::fetch(&metrics_addr);
        verify_code(&channel, &admin, call(&secret, None, &[])).await;
        let after = Scrape::fetch(&metrics_addr);
        if after.value("tollgate_limiter_fail_open_calls_total", &[])
            == before.value("tollgate_limiter_fail_open_calls_total", &[])
        {
            let seconds = after.value("tollgate_limiter_fail_open_seconds_total", &[]);
            tokio::time::sleep(Duration::from_millis(600)).await;
            let later = Scrape::fetch(&metrics_addr);
            assert_eq!(
                later.value("tollgate_limiter_fail_open_seconds_total", &[]),
                seconds,
                "no longer failing open"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never back on Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}
