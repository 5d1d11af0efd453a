//! What admission leases must keep, tried with replicas of the real binary:
//! a rate limit never passed nor starved, a hard cap exact while Redis is
//! slow, stopped or restarted empty, no usage lost, and changes obeyed at
//! once by every replica, whatever it holds.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost_types::FieldMask;
use tollgate::grpc::pb::{
    ChangePlanRequest, GetTenantRequest, Tenant, TenantStatus, UpdateTenantRequest, VerifyCode,
    billing_client::BillingClient, get_tenant_request,
};
use tonic::transport::Channel;

use crate::{
    helpers::{Server, TestRedis, with_token},
    replicas::{Cluster, channels, stored_exactly, verify_on},
    verify::setup_on,
};

async fn replicas(
    cluster: &Cluster,
    n: usize,
    settings: &[(&str, &str)],
) -> (Vec<Server>, Vec<Channel>) {
    let servers: Vec<Server> = (0..n).map(|_| cluster.replica(settings)).collect();
    let channels = channels(&servers).await;
    (servers, channels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_pass_a_rate_limit_nor_starve_it() {
    let cluster = Cluster::new().await;
    let (servers, channels) = replicas(&cluster, 3, &[]).await;
    // 600 a minute (10 a second), burst 20; billed overage, so only the
    // bucket refuses.
    let (secret, _, _) = setup_on(channels[0].clone(), &cluster.token, 600, 20, 1_000_000, 2).await;
    let (rate, burst, seconds) = (10.0, 20.0, 10.0);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Three times the rate, spread over the replicas: 10 calls a second on
    // each, offset so they do not arrive together.
    for (i, channel) in channels.iter().enumerate() {
        let (channel, token, secret) = (channel.clone(), cluster.token.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(33 * i as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut admitted = Vec::new();
            while started.elapsed() < Duration::from_secs_f64(seconds) {
                tick.tick().await;
                match verify_on(&channel, &token, &secret).await.unwrap() {
                    // When the answer arrived: the decision was made before.
                    VerifyCode::Valid => admitted.push(started.elapsed().as_secs_f64()),
                    VerifyCode::RateLimited => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            admitted
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.extend(t.await.unwrap());
    }
    admitted.sort_by(f64::total_cmp);
    for (n, at) in admitted.iter().enumerate() {
        let bound = burst + rate * at;
        assert!(
            (n + 1) as f64 <= bound,
            "{} admitted by {at:.3} s, past burst + rate x elapsed = {bound:.1}",
            n + 1
        );
    }
    let bound = burst + rate * seconds;
    let total = admitted.len() as f64;
    eprintln!("{total} admitted in {seconds} s at 3x the rate; the bound is {bound}");
    assert!(
        total >= 0.9 * bound,
        "leases starved the tenant: {total} admitted of {bound}"
    );
    for s in servers {
        s.stop();
    }
}

/// Callers spread over `channels` until each is refused by the hard cap;
/// a call refused as unavailable (Redis away and nothing leased) is
/// retried. Counts VALID answers into `valid` as they come.
async fn drain_retrying(
    channels: &[Channel],
    token: &str,
    secret: &str,
    clients: usize,
    valid: Arc<AtomicU64>,
) -> u64 {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (channel, token, secret, valid) = (
            channels[i % channels.len()].clone(),
            token.to_owned(),
            secret.to_owned(),
            valid.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut unavailable = 0u64;
            loop {
                match verify_on(&channel, &token, &secret).await {
                    Ok(VerifyCode::Valid) => {
                        valid.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(VerifyCode::QuotaExceeded) => return unavailable,
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(status) => panic!("{status}"),
                }
            }
        }));
    }
    let mut unavailable = 0;
    for t in tasks {
        unavailable += t.await.unwrap();
    }
    unavailable
}

/// Three replicas on the default 50 ms Redis budget drain a hard cap of
/// `cap` with `clients` callers while `trouble` strikes their own Redis at
/// `strike_at` VALID; returns the VALID count once the database holds
/// exactly that (never more).
async fn drain_while_redis_struck(
    cap: i64,
    clients: usize,
    strike_at: u64,
    trouble: impl FnOnce(&mut TestRedis) + Send + 'static,
) -> u64 {
    let mut cluster = Cluster::with_redis(TestRedis::own()).await;
    let (servers, channels) =
        replicas(&cluster, 3, &[("TOLLGATE_REDIS_TIMEOUT_MILLIS", "50")]).await;
    let (secret, _, tenant_id) = setup_on(
        channels[0].clone(),
        &cluster.token,
        1_000_000_000,
        1_000_000_000,
        cap,
        1,
    )
    .await;
    let valid = Arc::new(AtomicU64::new(0));
    let mut redis = cluster.take_redis();
    let watched = valid.clone();
    let striker = tokio::task::spawn_blocking(move || {
        while watched.load(Ordering::Relaxed) < strike_at {
            std::thread::sleep(Duration::from_millis(1));
        }
        trouble(&mut redis);
        redis
    });
    let unavailable =
        drain_retrying(&channels, &cluster.token, &secret, clients, valid.clone()).await;
    let _redis = striker.await.unwrap();
    let valid = valid.load(Ordering::Relaxed);
    eprintln!(
        "{valid} VALID on a hard cap of {cap}, {unavailable} calls refused as unavailable meanwhile"
    );
    stored_exactly(&cluster.db, &tenant_id, valid as i64).await;
    for s in servers {
        s.stop();
    }
    valid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_cap_stays_exact_while_redis_sleeps() {
    let valid = drain_while_redis_struck(10_000, 64, 3_000, |redis| {
        let _: () = redis.command(&["DEBUG", "SLEEP", "0.2"]);
    })
    .await;
    assert_eq!(valid, 10_000, "exactly the hard cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_cap_stays_exact_while_redis_stops_for_a_second() {
    let valid = drain_while_redis_struck(10_000, 64, 3_000, |redis| {
        redis.freeze(true);
        std::thread::sleep(Duration::from_secs(1));
        redis.freeze(false);
    })
    .await;
    assert_eq!(valid, 10_000, "exactly the hard cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_loses_no_usage_and_keeps_the_cap() {
    // The database ends holding exactly the VALID answers.
    let valid = drain_while_redis_struck(3_000, 16, 1_000, |redis| {
        redis.stop();
        std::thread::sleep(Duration::from_secs(1));
        redis.restart();
    })
    .await;
    assert!(valid <= 3_000, "{valid} VALID passed the hard cap of 3,000");
}

/// Polls `channel` until it answers `expected` instead of `before`; fails
/// past 100 ms.
async fn obeyed_within_100ms(
    channel: &Channel,
    token: &str,
    secret: &str,
    since: Instant,
    (before, expected): (VerifyCode, VerifyCode),
) {
    loop {
        let answer = verify_on(channel, token, secret).await.unwrap();
        if answer == expected {
            return;
        }
        assert_eq!(answer, before);
        assert!(
            since.elapsed() <= Duration::from_millis(100),
            "still {answer:?} {:?} after the change",
            since.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_and_a_suspension_reach_every_replica_within_100ms() {
    let cluster = Cluster::new().await;
    // A long cache TTL: only the change channel can tell B and C.
    let (servers, channels) = replicas(&cluster, 3, &[("TOLLGATE_KEY_CACHE_SECONDS", "600")]).await;
    let (a, others) = (&channels[0], &channels[1..]);
    let (secret, _, tenant_id) = setup_on(
        a.clone(),
        &cluster.token,
        1_000_000,
        1_000_000,
        1_000_000,
        2,
    )
    .await;
    // The plan downgraded to: a hard cap of 5.
    let (_, _, small) = setup_on(a.clone(), &cluster.token, 1_000_000, 1_000_000, 5, 1).await;
    let billing = |c: &Channel| BillingClient::new(c.clone());
    let small_plan = billing(a)
        .get_tenant(with_token(
            GetTenantRequest {
                lookup: Some(get_tenant_request::Lookup::Id(small)),
            },
            &cluster.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .plan_id;
    // B and C hold leases: many calls, well past the new cap.
    for c in others {
        for _ in 0..50 {
            assert_eq!(
                verify_on(c, &cluster.token, &secret).await.unwrap(),
                VerifyCode::Valid
            );
        }
    }
    billing(a)
        .change_plan(with_token(
            ChangePlanRequest {
                tenant_id: tenant_id.clone(),
                plan_id: small_plan,
            },
            &cluster.token,
        ))
        .await
        .unwrap();
    let changed = Instant::now();
    for c in others {
        let codes = (VerifyCode::Valid, VerifyCode::QuotaExceeded);
        obeyed_within_100ms(c, &cluster.token, &secret, changed, codes).await;
    }
    eprintln!(
        "B and C refused over the new cap {:?} after ChangePlan on A",
        changed.elapsed()
    );

    billing(a)
        .update_tenant(with_token(
            UpdateTenantRequest {
                tenant: Some(Tenant {
                    id: tenant_id,
                    status: TenantStatus::Paused as i32,
                    ..Tenant::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            &cluster.token,
        ))
        .await
        .unwrap();
    let paused = Instant::now();
    for c in others {
        let codes = (VerifyCode::QuotaExceeded, VerifyCode::TenantInactive);
        obeyed_within_100ms(c, &cluster.token, &secret, paused, codes).await;
    }
    eprintln!(
        "B and C refused the paused tenant {:?} after UpdateTenant on A",
        paused.elapsed()
    );
    for s in servers {
        s.stop();
    }
}
