//! PostgreSQL away (finding 7): a cached key keeps its last entitlements
//! until `key_stale_seconds`, a key not cached answers UNAVAILABLE within
//! the read budget (not the pool's timeout), admin calls fail fast, and the
//! usage admitted meanwhile reaches the database once it is back. Before,
//! cached keys answered only until about twice `key_cache_seconds`, then
//! every call waited the pool's 5 s for UNAVAILABLE.
//!
//! The outage lasts `TOLLGATE_TEST_OUTAGE_SECONDS` (4 by default; the
//! closing note's figures are of a 60-second run).
use std::time::{Duration, Instant};

use tollgate::config::{Config, RedisFailure};
use tollgate::grpc::pb::{
    self, GetTenantRequest, VerifyCode, billing_client::BillingClient, get_tenant_request::Lookup,
    verify_client::VerifyClient,
};
use tonic::Code;

use crate::{
    helpers::{InProcess, PrivatePostgres, TestDb, TestRedis},
    verify::{call, setup_on, stored_usage},
};

/// A production server (PostgreSQL + Redis) on a private PostgreSQL, keys
/// and credentials reloaded every second, staleness as given.
async fn start(pg: &PrivatePostgres, stale_seconds: u64) -> InProcess {
    start_on(pg, TestRedis::shared(), stale_seconds, |_| {}).await
}

async fn start_on(
    pg: &PrivatePostgres,
    redis: TestRedis,
    stale_seconds: u64,
    tune: impl FnOnce(&mut Config),
) -> InProcess {
    InProcess::start_with(TestDb::given(pg.url()), Some(redis), |c| {
        // Keys and credentials both reloaded during the outage.
        c.key_cache_seconds = 1;
        c.credential_cache_seconds = 1;
        c.key_stale_seconds = stale_seconds;
        c.verify_read_budget_millis = 100;
        c.database_timeout_millis = 1_000;
        c.usage_flush_millis = 200;
        tune(c);
    })
    .await
}

/// A tenant with two keys: one verified (so cached), one never; their
/// secrets and the tenant's id.
async fn keys(server: &InProcess) -> (String, String, String) {
    let (hot, _, tenant_id) = setup_on(
        server.channel(),
        &server.admin_token,
        600_000,
        10_000,
        1_000_000,
        2,
    )
    .await;
    let cold = server
        .keys()
        .create_key(server.admin(pb::CreateKeyRequest {
            key: Some(pb::Key {
                tenant_id: tenant_id.clone(),
                name: "cold".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    (hot, cold, tenant_id)
}

/// One Verify of one unit: its code (or the gRPC error's) and its time.
async fn verify(server: &InProcess, secret: &str) -> (Result<VerifyCode, Code>, Duration) {
    verify_request(server, call(secret, Some(1), &[])).await
}

async fn verify_request(
    server: &InProcess,
    request: pb::VerifyRequest,
) -> (Result<VerifyCode, Code>, Duration) {
    let mut request = server.verify(request);
    request.set_timeout(Duration::from_secs(10));
    let started = Instant::now();
    let answer = VerifyClient::new(server.channel()).verify(request).await;
    let took = started.elapsed();
    let code = answer
        .map(|r| VerifyCode::try_from(r.into_inner().code).unwrap())
        .map_err(|s| s.code());
    (code, took)
}

fn outage() -> Duration {
    let seconds = std::env::var("TOLLGATE_TEST_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(seconds)
}

#[tokio::test]
async fn a_cached_key_is_served_while_postgresql_is_away() {
    let pg = PrivatePostgres::start();
    let server = start(&pg, 600).await;
    let (hot, cold, tenant_id) = keys(&server).await;
    assert_eq!(verify(&server, &hot).await.0, Ok(VerifyCode::Valid));
    let mut admitted = 1i64;

    pg.freeze(true);
    let frozen_at = Instant::now();
    // Calls every 50 ms for the whole outage, each reported.
    let (mut valid, mut other, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
    while frozen_at.elapsed() < outage() {
        let (code, took) = verify(&server, &hot).await;
        slowest = slowest.max(took);
        match code {
            Ok(VerifyCode::Valid) => valid += 1,
            other_code => other.push(other_code),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admitted += i64::try_from(valid).unwrap();
    println!(
        "PostgreSQL frozen {:.1} s: cached key {valid} VALID, {} other ({other:?}), slowest {:.1} ms",
        frozen_at.elapsed().as_secs_f64(),
        other.len(),
        slowest.as_secs_f64() * 1e3
    );
    assert!(other.is_empty(), "a cached key kept verifying: {other:?}");
    assert!(valid > 10, "calls were made: {valid}");

    // A key not cached cannot be read: UNAVAILABLE within the read budget.
    let (code, took) = verify(&server, &cold).await;
    println!(
        "uncached key: {code:?} in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(code, Err(Code::Unavailable));
    assert!(
        took < Duration::from_secs(1),
        "bounded by the budget: {took:?}"
    );

    // Admin calls fail fast too (database_timeout_millis, 1 s here).
    let started = Instant::now();
    let status = BillingClient::new(server.channel())
        .get_tenant(server.admin(GetTenantRequest {
            lookup: Some(Lookup::Id(tenant_id.clone())),
        }))
        .await
        .expect_err("the database is frozen");
    let took = started.elapsed();
    println!(
        "admin GetTenant: {:?} in {:.1} ms",
        status.code(),
        took.as_secs_f64() * 1e3
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // Killed outright (connections reset, new ones refused): still served.
    pg.freeze(false);
    pg.kill();
    for _ in 0..5 {
        assert_eq!(verify(&server, &hot).await.0, Ok(VerifyCode::Valid));
        admitted += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(verify(&server, &cold).await.0, Err(Code::Unavailable));

    // Back: the uncached key is read again, and every unit admitted during
    // the outage is in the database, once.
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match verify(&server, &cold).await.0 {
            Ok(VerifyCode::Valid) => break,
            code => assert!(Instant::now() < deadline, "after the outage: {code:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admitted += 1;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let used = stored_usage(&pg.url()).await;
        if used == admitted {
            break;
        }
        assert!(used < admitted, "counted twice: {used} of {admitted}");
        assert!(
            Instant::now() < deadline,
            "usage written after the outage: {used} of {admitted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn past_key_stale_seconds_a_cached_key_is_unavailable() {
    let pg = PrivatePostgres::start();
    let server = start(&pg, 2).await;
    let (hot, _, _) = keys(&server).await;
    assert_eq!(verify(&server, &hot).await.0, Ok(VerifyCode::Valid));
    pg.freeze(true);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        verify(&server, &hot).await.0,
        Ok(VerifyCode::Valid),
        "expired, not yet stale"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (code, took) = verify(&server, &hot).await;
    assert_eq!(code, Err(Code::Unavailable), "stale");
    assert!(took < Duration::from_secs(1), "{took:?}");
    pg.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while verify(&server, &hot).await.0 != Ok(VerifyCode::Valid) {
        assert!(
            Instant::now() < deadline,
            "served again once PostgreSQL is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The flusher probes Redis whatever the database does: with PostgreSQL
/// away (so the usage write fails at every tick), a Redis that stopped
/// answering and came back is used again. Before, the probe came after the
/// write, so Verify stayed off Redis (here: UNAVAILABLE, failing closed)
/// for as long as PostgreSQL was away.
#[tokio::test]
async fn redis_coming_back_is_noticed_while_postgresql_is_away() {
    let pg = PrivatePostgres::start();
    let mut server = start_on(&pg, TestRedis::own(), 600, |c| {
        c.redis_failure = RedisFailure::Closed;
    })
    .await;
    let (hot, _, _) = keys(&server).await;
    assert_eq!(verify(&server, &hot).await.0, Ok(VerifyCode::Valid));
    let mut admitted = 1i64;
    pg.freeze(true);
    // Units admitted now wait in memory for the database.
    for _ in 0..5 {
        assert_eq!(verify(&server, &hot).await.0, Ok(VerifyCode::Valid));
        admitted += 1;
    }
    server.redis().freeze(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 10 {
        match verify(&server, &hot).await.0 {
            Err(Code::Unavailable) => refused_in_a_row += 1,
            Ok(VerifyCode::Valid) => {
                admitted += 1; // from what the lease still held
                refused_in_a_row = 0;
            }
            code => panic!("Redis frozen: {code:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "Redis frozen: UNAVAILABLE (failing closed)"
        );
    }
    server.redis().freeze(false);
    let back = Instant::now();
    loop {
        let code = verify(&server, &hot).await.0;
        if code == Ok(VerifyCode::Valid) {
            admitted += 1;
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "Redis back, PostgreSQL still away: {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "Redis back, PostgreSQL frozen: Verify on Redis again after {:.0} ms",
        back.elapsed().as_secs_f64() * 1e3
    );
    pg.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let used = stored_usage(&pg.url()).await;
        if used == admitted {
            break;
        }
        assert!(used < admitted, "counted twice: {used} of {admitted}");
        assert!(
            Instant::now() < deadline,
            "usage written after the outage: {used} of {admitted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
