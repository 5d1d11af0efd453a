//! Production across processes: replicas of the real binary sharing one
//! PostgreSQL and one Redis, and a Redis that fails, is flushed, or returns.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::Row;
use tollgate::{
    config::{Config, RedisFailure},
    grpc::pb::{
        GetUsageRequest, RevokeKeyRequest, VerifyCode, billing_client::BillingClient,
        keys_client::KeysClient, verify_client::VerifyClient,
    },
};
use tonic::transport::Channel;

use crate::{
    helpers::{InProcess, Server, TestDb, TestRedis, run_tollgate, with_token},
    verify::{call, code, drain_to_cap, setup, setup_on, stored_usage, verify},
};

/// One database and one Redis for several replicas.
pub struct Cluster {
    pub db: TestDb,
    redis_url: String,
    redis_prefix: String,
    /// Kept alive with the cluster, unless a test takes it to break it.
    redis: Option<TestRedis>,
    pub token: String,
}

impl Cluster {
    pub async fn new() -> Self {
        Self::with_redis(TestRedis::shared()).await
    }

    pub async fn with_redis(redis: TestRedis) -> Self {
        let db = TestDb::postgres().await;
        let token = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
        Self {
            db,
            redis_url: redis.url.clone(),
            redis_prefix: redis.prefix.clone(),
            redis: Some(redis),
            token,
        }
    }

    /// The cluster's Redis, for a test to stop, freeze or restart.
    pub fn take_redis(&mut self) -> TestRedis {
        self.redis.take().expect("the cluster's Redis")
    }

    /// The settings that put a process on the cluster's Redis.
    pub fn redis_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOLLGATE_REDIS_URL", self.redis_url.clone()),
            ("TOLLGATE_REDIS_KEY_PREFIX", self.redis_prefix.clone()),
        ]
    }

    /// A replica of the real binary, with extra `TOLLGATE_*` settings.
    pub fn replica(&self, settings: &[(&str, &str)]) -> Server {
        let mut env = self.redis_env();
        env.extend([
            ("TOLLGATE_USAGE_FLUSH_MILLIS", "200".to_owned()),
            // Tests run side by side on one PostgreSQL: a few each.
            ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "4".to_owned()),
        ]);
        // A wide budget: a loaded test machine's scheduling hiccups are not
        // the Redis failures another test covers.
        env.push(("TOLLGATE_REDIS_TIMEOUT_MILLIS", "2000".to_owned()));
        env.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Server::start_env(&["--database-url", self.db.url()], &env)
    }
}

pub async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connecting to a replica")
}

/// A channel to each of `servers`, in order.
pub async fn channels(servers: &[Server]) -> Vec<Channel> {
    let mut channels = Vec::new();
    for s in servers {
        channels.push(channel(s).await);
    }
    channels
}

pub async fn verify_on(
    channel: &Channel,
    token: &str,
    secret: &str,
) -> Result<VerifyCode, tonic::Status> {
    VerifyClient::new(channel.clone())
        .verify(with_token(call(secret, None, &[]), token))
        .await
        .map(|r| code(r.get_ref()))
}

pub async fn tenant_usage(db: &TestDb, tenant_id: &str) -> i64 {
    let store =
        tollgate::store::sql::SqlStore::connect(db.url(), 1, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) AS n FROM usage_counters WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    store.close().await;
    row.try_get("n").unwrap()
}

/// Waits until the database holds `expected` for the tenant, and never more.
pub async fn stored_exactly(db: &TestDb, tenant_id: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = tenant_usage(db, tenant_id).await;
        assert!(
            stored <= expected,
            "tenant {tenant_id}: stored {stored}, more than the {expected} served"
        );
        if stored == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tenant {tenant_id}: stored {stored} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_exactly_the_hard_cap() {
    let cluster = Cluster::new().await;
    let replicas: Vec<Server> = (0..3).map(|_| cluster.replica(&[])).collect();
    let channels = channels(&replicas).await;
    let (secret, _, tenant_id) = setup_on(
        channels[0].clone(),
        &cluster.token,
        1_000_000_000,
        1_000_000_000,
        10_000,
        1,
    )
    .await;
    let valid = drain_to_cap(&channels, &cluster.token, &secret, 64).await;
    assert_eq!(valid, 10_000, "three replicas admit exactly the hard cap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = tenant_usage(&cluster.db, &tenant_id).await;
        assert!(
            stored <= 10_000,
            "durable usage {stored} exceeds admitted calls"
        );
        if stored == 10_000 {
            break;
        }
        assert!(Instant::now() < deadline, "usage not flushed: {stored}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let usage = BillingClient::new(channels[2].clone())
        .get_usage(with_token(
            GetUsageRequest {
                tenant_id,
                at: None,
            },
            &cluster.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.resources.len(), 1);
    assert_eq!(usage.resources[0].used, 10_000);
    assert_eq!(usage.resources[0].included, 10_000);
    assert_eq!(usage.resources[0].overage, 0, "a hard cap bills no overage");
    for r in replicas {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_through_one_replica_reaches_another_within_100ms() {
    let cluster = Cluster::new().await;
    // A long cache TTL: only the change channel can tell replica B.
    let a = cluster.replica(&[("TOLLGATE_KEY_CACHE_SECONDS", "600")]);
    let b = cluster.replica(&[("TOLLGATE_KEY_CACHE_SECONDS", "600")]);
    let (ca, cb) = (channel(&a).await, channel(&b).await);
    let (secret, key_id, _) = setup_on(
        ca.clone(),
        &cluster.token,
        1_000_000,
        1_000_000,
        1_000_000,
        2,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            verify_on(&cb, &cluster.token, &secret).await.unwrap(),
            VerifyCode::Valid
        );
    }
    KeysClient::new(ca)
        .revoke_key(with_token(RevokeKeyRequest { id: key_id }, &cluster.token))
        .await
        .unwrap();
    let revoked = Instant::now();
    loop {
        let answer = verify_on(&cb, &cluster.token, &secret).await.unwrap();
        if answer == VerifyCode::KeyRevoked {
            break;
        }
        assert_eq!(answer, VerifyCode::Valid);
        assert!(
            revoked.elapsed() <= Duration::from_millis(100),
            "replica B still admits the revoked key after {:?}",
            revoked.elapsed()
        );
    }
    eprintln!(
        "replica B answered KEY_REVOKED {:?} after RevokeKey on A",
        revoked.elapsed()
    );
    assert!(revoked.elapsed() <= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_usage() {
    let cluster = Cluster::new().await;
    // The victim never flushes on its own: what it served is only in the
    // records of its leases in Redis.
    let victim = cluster.replica(&[
        ("TOLLGATE_USAGE_FLUSH_MILLIS", "3600000"),
        ("TOLLGATE_USAGE_SWEEP_SECONDS", "3600"),
    ]);
    let survivor = cluster.replica(&[("TOLLGATE_USAGE_SWEEP_SECONDS", "1")]);
    let (cv, cs) = (channel(&victim).await, channel(&survivor).await);
    // Billed overage: every call is admitted, so every VALID is one unit.
    let (alone, _, alone_tenant) = setup_on(
        cv.clone(),
        &cluster.token,
        1_000_000_000,
        1_000_000_000,
        100,
        2,
    )
    .await;
    let (shared, _, shared_tenant) = setup_on(
        cv.clone(),
        &cluster.token,
        1_000_000_000,
        1_000_000_000,
        100,
        2,
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // (secret, channel, through the victim): the first tenant is served only
    // by the victim, so only the survivor's claim on its leases can write
    // its usage.
    let plan = [
        (&alone, &cv, true),
        (&shared, &cv, true),
        (&shared, &cs, false),
    ];
    for (secret, channel, on_victim) in plan {
        for _ in 0..8 {
            let (secret, channel, token, stop) = (
                secret.clone(),
                channel.clone(),
                cluster.token.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (mut valid, mut cut_off) = (0i64, 0i64);
                while !stop.load(Ordering::Relaxed) {
                    match verify_on(&channel, &token, &secret).await {
                        Ok(VerifyCode::Valid) => valid += 1,
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(status) => {
                            assert!(on_victim, "the survivor failed: {status}");
                            // The call in flight when the victim died: it may
                            // have been counted without being answered.
                            cut_off += 1;
                            break;
                        }
                    }
                }
                (secret, valid, cut_off)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    victim.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut valid_alone, mut valid_shared, mut cut_alone, mut cut_shared) = (0, 0, 0, 0);
    for t in tasks {
        let (secret, valid, cut) = t.await.unwrap();
        if secret == alone {
            valid_alone += valid;
            cut_alone += cut;
        } else {
            valid_shared += valid;
            cut_shared += cut;
        }
    }
    assert!(
        valid_alone > 0 && valid_shared > 0,
        "load ran on both tenants"
    );
    // Wait for the survivor's flush and sweep to write what it finds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (stored_alone, stored_shared) = loop {
        let a = tenant_usage(&cluster.db, &alone_tenant).await;
        let s = tenant_usage(&cluster.db, &shared_tenant).await;
        if a >= valid_alone && s >= valid_shared {
            // One more sweep: the totals must not move any further.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            break (
                tenant_usage(&cluster.db, &alone_tenant).await,
                tenant_usage(&cluster.db, &shared_tenant).await,
            );
        }
        assert!(
            Instant::now() < deadline,
            "usage lost: stored {a} and {s}, clients saw {valid_alone} and {valid_shared} VALID"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The survivor says, for each lease of the victim it claimed, the most
    // the lease can have held unused: what it held after its last grant.
    let unused_at_most = |tenant: &str| -> i64 {
        survivor
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("a dead replica's lease claimed"))
                    && l["fields"]["tenant_id"] == tenant
            })
            .map(|l| l["fields"]["unused_at_most"].as_i64().expect("a bound"))
            .sum()
    };
    let (bound_alone, bound_shared) = (
        unused_at_most(&alone_tenant),
        unused_at_most(&shared_tenant),
    );
    eprintln!(
        "victim-only tenant: {valid_alone} VALID, {stored_alone} stored, {cut_alone} calls cut off, \
         {bound_alone} leased unused at most; shared tenant: {valid_shared} VALID, {stored_shared} \
         stored, {cut_shared} cut off, {bound_shared} leased unused at most"
    );
    assert!(bound_alone > 0, "the victim's lease was claimed");
    // Nothing lost; the surplus allowed is a call cut off mid-flight (served,
    // never answered) and what the victim's lease held unused.
    assert!((valid_alone..=valid_alone + cut_alone + bound_alone).contains(&stored_alone));
    assert!((valid_shared..=valid_shared + cut_shared + bound_shared).contains(&stored_shared));
    survivor.stop();
}

/// A server on a private Redis, flushing every 50 ms, whose new key (on a
/// quota with billed overage) has made `calls` VALID calls, all of them
/// already written to the database.
async fn flushed_after(calls: i64, tune: impl FnOnce(&mut Config)) -> (InProcess, String) {
    let server = InProcess::start_with(TestDb::postgres().await, Some(TestRedis::own()), |c| {
        c.usage_flush_millis = 50;
        tune(c)
    })
    .await;
    let (secret, _, _) = setup_on(
        server.channel(),
        &server.admin_token,
        1_000_000,
        1_000_000,
        1_000,
        2,
    )
    .await;
    for _ in 0..calls {
        assert_eq!(
            code(&verify(&server, call(&secret, None, &[])).await),
            VerifyCode::Valid
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_usage(server.db().url()).await < calls {
        assert!(Instant::now() < deadline, "usage not flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, secret)
}

#[tokio::test]
async fn a_flushed_redis_restores_counters_from_the_database() {
    let (mut server, secret) = flushed_after(30, |_| {}).await;
    let _: () = server.redis().command(&["FLUSHALL"]);
    let r = verify(&server, call(&secret, None, &[])).await;
    assert_eq!(code(&r), VerifyCode::Valid);
    assert_eq!(
        r.quota.unwrap().used,
        31,
        "the counter continues from the durable 30, not from zero"
    );
}

async fn redis_outage(failure: RedisFailure) -> (InProcess, String) {
    let (mut server, secret) = flushed_after(5, |c| c.redis_failure = failure).await;
    server.redis().stop();
    // The flusher's probe notices within a few ticks; calls made before it
    // does may have reached Redis and are not counted twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (server, secret)
}

/// Verify until it answers VALID again, within `limit`.
async fn recovers(server: &InProcess, secret: &str, limit: Duration) -> i64 {
    let back = Instant::now();
    loop {
        if let Ok(r) = VerifyClient::new(server.channel())
            .verify(server.verify(call(secret, None, &[])))
            .await
            && code(r.get_ref()) == VerifyCode::Valid
        {
            return r.into_inner().quota.unwrap().used;
        }
        assert!(
            back.elapsed() < limit,
            "Verify did not recover after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failing_closed_answers_unavailable_at_once_and_recovers() {
    let (mut server, secret) = redis_outage(RedisFailure::Closed).await;
    for _ in 0..20 {
        let started = Instant::now();
        let err = VerifyClient::new(server.channel())
            .verify(server.verify(call(&secret, None, &[])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "an answer within the budget, not a hang: {:?}",
            started.elapsed()
        );
    }
    server.redis().restart();
    let used = recovers(&server, &secret, Duration::from_secs(10)).await;
    assert_eq!(used, 6, "back on Redis, restored from the database");
}

#[tokio::test]
async fn failing_open_admits_locally_and_counts_the_usage() {
    let (mut server, secret) = redis_outage(RedisFailure::Open).await;
    for _ in 0..7 {
        let started = Instant::now();
        let r = verify(&server, call(&secret, None, &[])).await;
        assert_eq!(code(&r), VerifyCode::Valid, "admitted on the local bucket");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let mut admitted: i64 = 5 + 7;
    server.redis().restart();
    // Redis came back empty: the counter is restored from the database and
    // the units admitted meanwhile are added to it, exactly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            code(&verify(&server, call(&secret, None, &[])).await),
            VerifyCode::Valid
        );
        admitted += 1;
        if let Some(in_redis) = counter_in_redis(server.redis()) {
            assert!(
                in_redis <= admitted,
                "Redis counts {in_redis} of {admitted}"
            );
            if in_redis == admitted {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "outage usage never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = stored_usage(server.db().url()).await;
        assert!(stored <= admitted);
        if stored == admitted {
            break;
        }
        assert!(Instant::now() < deadline, "stored {stored} of {admitted}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let usage = BillingClient::new(server.channel())
        .get_usage(server.admin(GetUsageRequest {
            tenant_id: verify(&server, call(&secret, Some(0), &[])).await.tenant_id,
            at: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.resources[0].used, admitted);
}

/// Failing open guards no hard cap: its count is in Redis, and a replica
/// alone cannot know what the others admitted. So a call charging one is
/// refused as unavailable; rate limits and billed quotas fail open.
#[tokio::test]
async fn failing_open_never_passes_a_hard_cap() {
    let (server, billed) = redis_outage(RedisFailure::Open).await;
    let (capped, _) = setup(&server, 1_000_000, 1_000_000, 1_000).await;
    for _ in 0..5 {
        let refused = VerifyClient::new(server.channel())
            .verify(server.verify(call(&capped, None, &[])))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            refused.message().contains("hard cap"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        code(&verify(&server, call(&billed, None, &[])).await),
        VerifyCode::Valid
    );
    let mut rate_only = call(&capped, None, &[]);
    rate_only.resource.clear();
    assert_eq!(
        code(&verify(&server, rate_only).await),
        VerifyCode::Valid,
        "no quota charged: the rate limit fails open"
    );
}

/// The one quota counter in a private Redis (a field `q:…` of the tenant's
/// hash), if it is there.
fn counter_in_redis(redis: &TestRedis) -> Option<i64> {
    let hashes: Vec<String> = redis.command(&["KEYS", &format!("{}:{{*}}", redis.prefix)]);
    let fields: std::collections::HashMap<String, String> =
        redis.command(&["HGETALL", hashes.first()?]);
    fields
        .iter()
        .find(|(f, _)| f.starts_with("q:"))
        .map(|(_, v)| v.parse().unwrap())
}
