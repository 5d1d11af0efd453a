//! Replicas of the real binary on a Redis Cluster: each tenant's hash lives
//! on the master owning its hash tag, and caps, flushes and the claims on a
//! dead replica's leases must hold on every master alike.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tollgate::grpc::pb::VerifyCode;
use tonic::transport::Channel;

use crate::{
    helpers::{Server, TestDb, TestRedisCluster, run_tollgate},
    replicas::{channel, channels, stored_exactly, tenant_usage, verify_on},
    verify::{drain_to_cap, setup_on},
};

/// One database and one three-master Redis Cluster for several replicas.
struct OnRedisCluster {
    db: TestDb,
    redis: TestRedisCluster,
    prefix: String,
    token: String,
}

impl OnRedisCluster {
    async fn new() -> Self {
        let redis = TestRedisCluster::start(3);
        let db = TestDb::postgres().await;
        let token = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
        Self {
            db,
            redis,
            prefix: format!("tgtest-{}", uuid::Uuid::now_v7().simple()),
            token,
        }
    }

    /// A replica of the real binary, with extra `TOLLGATE_*` settings.
    fn replica(&self, settings: &[(&str, &str)]) -> Server {
        let mut env = vec![
            ("TOLLGATE_REDIS_CLUSTER", "true".to_owned()),
            ("TOLLGATE_REDIS_URL", self.redis.seeds()),
            ("TOLLGATE_REDIS_KEY_PREFIX", self.prefix.clone()),
            ("TOLLGATE_USAGE_FLUSH_MILLIS", "200".to_owned()),
            // Tests run side by side on one PostgreSQL: a few each.
            ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            // A loaded test machine's hiccups are not Redis failures.
            ("TOLLGATE_REDIS_TIMEOUT_MILLIS", "2000".to_owned()),
        ];
        env.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Server::start_env(&["--database-url", self.db.url()], &env)
    }

    async fn replicas(&self, n: usize) -> (Vec<Server>, Vec<Channel>) {
        let servers: Vec<Server> = (0..n).map(|_| self.replica(&[])).collect();
        let channels = channels(&servers).await;
        (servers, channels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_redis_cluster_admit_exactly_the_hard_cap() {
    let cluster = OnRedisCluster::new().await;
    let (replicas, channels) = cluster.replicas(3).await;
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
    stored_exactly(&cluster.db, &tenant_id, 10_000).await;
    for r in replicas {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_spread_over_every_master_keep_their_caps() {
    let cluster = OnRedisCluster::new().await;
    let (replicas, channels) = cluster.replicas(3).await;
    // Tenants until every master owns at least 8 (tenant ids are random,
    // so where each lands is only known once it exists).
    let mut tenants = Vec::new();
    let mut owned = vec![0; 3];
    while owned.iter().any(|&n| n < 8) {
        assert!(tenants.len() < 200, "tenants never spread: {owned:?}");
        let (secret, _, tenant_id) = setup_on(
            channels[tenants.len() % channels.len()].clone(),
            &cluster.token,
            1_000_000_000,
            1_000_000_000,
            50,
            1,
        )
        .await;
        owned[cluster
            .redis
            .owner_of(&format!("{}:{{{tenant_id}}}", cluster.prefix))] += 1;
        tenants.push((secret, tenant_id));
    }
    let mut drains = Vec::new();
    for (secret, _) in &tenants {
        let (channels, token, secret) = (channels.clone(), cluster.token.clone(), secret.clone());
        drains.push(tokio::spawn(async move {
            drain_to_cap(&channels, &token, &secret, 8).await
        }));
    }
    for (drain, (_, tenant_id)) in drains.into_iter().zip(&tenants) {
        assert_eq!(drain.await.unwrap(), 50, "tenant {tenant_id} kept its cap");
    }
    let keys = cluster
        .redis
        .keys_on_each_node(&format!("{}:*", cluster.prefix));
    assert!(
        keys.iter().all(|&n| n > 0),
        "tenant keys on every master: {keys:?}"
    );
    for (_, tenant_id) in &tenants {
        stored_exactly(&cluster.db, tenant_id, 50).await;
    }
    for r in replicas {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_leases_are_claimed_on_every_master() {
    let cluster = OnRedisCluster::new().await;
    // The victim never flushes on its own: what it served is only in the
    // records of its leases, on whichever master holds each tenant.
    let victim = cluster.replica(&[
        ("TOLLGATE_USAGE_FLUSH_MILLIS", "3600000"),
        ("TOLLGATE_USAGE_SWEEP_SECONDS", "3600"),
    ]);
    let survivor = cluster.replica(&[("TOLLGATE_USAGE_SWEEP_SECONDS", "1")]);
    let cv = channel(&victim).await;
    // Billed overage: every call is admitted, so every VALID is one unit.
    let mut tenants = Vec::new();
    for _ in 0..12 {
        let (secret, _, tenant_id) = setup_on(
            cv.clone(),
            &cluster.token,
            1_000_000_000,
            1_000_000_000,
            100,
            2,
        )
        .await;
        tenants.push((secret, tenant_id));
    }
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Load on the victim only: only the survivor's claims on its leases can
    // write these tenants' usage.
    for (i, (secret, _)) in tenants.iter().enumerate() {
        for _ in 0..3 {
            let (secret, channel, token, killed) = (
                secret.clone(),
                cv.clone(),
                cluster.token.clone(),
                killed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut valid = 0i64;
                loop {
                    match verify_on(&channel, &token, &secret).await {
                        Ok(VerifyCode::Valid) => valid += 1,
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(status) => {
                            assert!(
                                killed.load(Ordering::Relaxed),
                                "the victim failed before the kill: {status}"
                            );
                            // The call in flight when the victim died: it may
                            // have been counted without being answered.
                            return (i, valid, 1i64);
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    killed.store(true, Ordering::Relaxed);
    victim.kill();
    let (mut valid, mut cut_off) = (vec![0i64; tenants.len()], vec![0i64; tenants.len()]);
    for t in tasks {
        let (i, v, c) = t.await.unwrap();
        valid[i] += v;
        cut_off[i] += c;
    }
    assert!(valid.iter().all(|&v| v > 0), "load ran on every tenant");
    // Twelve random hash tags usually cover all three masters; not always.
    eprintln!(
        "keys per master: {:?}",
        cluster
            .redis
            .keys_on_each_node(&format!("{}:*", cluster.prefix))
    );
    let stored_all = async || {
        let mut stored = Vec::new();
        for (_, tenant_id) in &tenants {
            stored.push(tenant_usage(&cluster.db, tenant_id).await);
        }
        stored
    };
    // Wait for the survivor's sweeps to claim the leases on every master.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = stored_all().await;
        if stored.iter().zip(&valid).all(|(s, v)| s >= v) {
            // One more sweep: the totals must not move any further.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            break stored_all().await;
        }
        assert!(
            Instant::now() < deadline,
            "usage lost: stored {stored:?}, clients saw {valid:?} VALID"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The survivor says, for each lease of the victim it claimed, the most
    // the lease can have held unused: what it held after its last grant.
    let logs: Vec<serde_json::Value> = survivor
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let unused_at_most = |tenant: &str| -> i64 {
        logs.iter()
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("a dead replica's lease claimed"))
                    && l["fields"]["tenant_id"] == tenant
            })
            .map(|l| l["fields"]["unused_at_most"].as_i64().expect("a bound"))
            .sum()
    };
    for (i, (_, tenant_id)) in tenants.iter().enumerate() {
        let bound = unused_at_most(tenant_id);
        eprintln!(
            "tenant {tenant_id}: {} VALID, {} stored, {} cut off, {bound} leased unused at most",
            valid[i], stored[i], cut_off[i]
        );
        assert!(
            bound > 0,
            "the victim's lease on tenant {tenant_id} was claimed"
        );
        // Nothing lost; the surplus allowed is the calls cut off mid-flight
        // (served, never answered) and what the victim's leases held unused.
        assert!(
            (valid[i]..=valid[i] + cut_off[i] + bound).contains(&stored[i]),
            "tenant {tenant_id}: stored {} for {} VALID",
            stored[i],
            valid[i]
        );
    }
    survivor.stop();
}
