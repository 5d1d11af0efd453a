//! The server under test and what it is set up with: plans, tenants and
//! keys for each workload.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, Key, Plan, Price, Quota, QuotaReset,
    RateLimit, Tenant, VerifyView, billing_client::BillingClient, keys_client::KeysClient,
    plans_client::PlansClient, quota_reset,
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{Options, calls::one, hot};

/// The server under test, stopped and its database and Redis keys dropped
/// on drop.
pub struct Target {
    pub child: Child,
    pub addr: String,
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<String>,
    admin_url: String,
    db: String,
    redis_url: String,
    prefix: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let (admin_url, db) = (self.admin_url.clone(), self.db.clone());
        let (redis_url, prefix) = (self.redis_url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await
                    {
                        let drop = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                        let _ = sqlx::Executor::execute(&mut conn, drop.as_str()).await;
                    }
                    // Else each run leaves its tenants' hashes for a day.
                    let _ = unlink_prefixed(&redis_url, &prefix).await;
                })
        })
        .join();
    }
}

/// Unlinks every key under `prefix`, a SCAN page at a time.
async fn unlink_prefixed(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

pub async fn start(o: &Options, token: &str, prefix: &str, metrics: bool) -> Target {
    let db = format!("tollgate_bench_{}", uuid::Uuid::now_v7().simple());
    let admin_url = format!("{}/postgres", o.database_url);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .expect("PostgreSQL is not reachable: start it or pass --database-url");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("creating the bench database");
    let addr = free_addr();
    let metrics_addr = metrics.then(free_addr);
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(if metrics {
        "loadgen-server-metrics.log"
    } else {
        "loadgen-server.log"
    });
    println!("server log: {}", log.display());
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--database-url", &format!("{}/{db}", o.database_url)])
        .args(["serve", "--listen", &addr, "--redis-url", &o.redis_url])
        .env("TOLLGATE_ADMIN_TOKEN", token)
        .env("TOLLGATE_REDIS_KEY_PREFIX", prefix)
        .env("TOLLGATE_LOG_FILTER", "warn")
        // Keys stay cached through every phase: the long tail measures the
        // limiter's cost for cold tenants, not key reloads (a key's entry is
        // otherwise read again from PostgreSQL after 5 s).
        .env("TOLLGATE_KEY_CACHE_SECONDS", "600")
        .env(
            "TOLLGATE_METRICS_LISTEN",
            metrics_addr.clone().unwrap_or_default(),
        )
        .env(
            "TOLLGATE_WORKER_THREADS",
            std::env::var("LOADGEN_SERVER_THREADS").unwrap_or_default(),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("creating the server log"))
        .spawn()
        .expect("starting tollgate");
    let target = Target {
        child,
        addr,
        metrics_addr,
        admin_url,
        db,
        redis_url: o.redis_url.clone(),
        prefix: prefix.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{}", target.addr))
            .unwrap()
            .connect()
            .await
            && HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        {
            return target;
        }
        assert!(Instant::now() < deadline, "tollgate did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A plan with `included` units (hard cap or billed); its id.
pub async fn plan(
    channel: &Channel,
    token: &str,
    slug: &str,
    included: i64,
    policy: i32,
) -> String {
    PlansClient::new(channel.clone())
        .create_plan(authed(
            CreatePlanRequest {
                plan: Some(Plan {
                    slug: slug.into(),
                    display_name: slug.into(),
                    price: Some(Price {
                        amount_minor: 1000,
                        currency: "USD".into(),
                    }),
                    billing_interval: 1,
                    rate_limit: Some(RateLimit {
                        requests_per_minute: 1_000_000_000,
                        burst: 1_000_000_000,
                    }),
                    quotas: vec![Quota {
                        resource: "calls".into(),
                        included_units: included,
                        overage_policy: policy,
                        overage_unit_price_micros: if policy == 2 { 10 } else { 0 },
                    }],
                    // A few, as a real plan lists: the FULL answer carries them.
                    features: ["model:small", "model:large", "export:csv"]
                        .map(String::from)
                        .into(),
                    quota_reset: Some(QuotaReset {
                        schedule: Some(quota_reset::Schedule::CalendarMonth(
                            quota_reset::CalendarMonth { day: 1 },
                        )),
                    }),
                    ..Plan::default()
                }),
            },
            token,
        ))
        .await
        .expect("creating a plan")
        .into_inner()
        .id
}

/// A tenant on the plan `plan_id` and its key's secret.
pub async fn tenant_key(channel: &Channel, token: &str, plan_id: &str) -> String {
    let tenant = BillingClient::new(channel.clone())
        .create_tenant(authed(
            CreateTenantRequest {
                tenant: Some(Tenant {
                    plan_id: plan_id.into(),
                    ..Tenant::default()
                }),
            },
            token,
        ))
        .await
        .expect("creating a tenant")
        .into_inner();
    KeysClient::new(channel.clone())
        .create_key(authed(
            CreateKeyRequest {
                key: Some(Key {
                    tenant_id: tenant.id,
                    name: "bench".into(),
                    ..Key::default()
                }),
            },
            token,
        ))
        .await
        .expect("creating a key")
        .into_inner()
        .secret
}

/// A server's connections, its allowed key (warm) and its denied key.
pub struct Prepared {
    pub channels: Vec<Channel>,
    pub allowed: String,
    pub denied: String,
}

pub async fn prepare(o: &Options, target: &Target, token: &str) -> Prepared {
    let mut channels = Vec::new();
    for _ in 0..o.connections {
        channels.push(
            Channel::from_shared(format!("http://{}", target.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let billed = plan(&channels[0], token, "bench-allowed", 1_000, 2).await;
    let allowed = tenant_key(&channels[0], token, &billed).await;
    let capped = plan(&channels[0], token, "bench-denied", 1, 1).await;
    let denied = tenant_key(&channels[0], token, &capped).await;
    let allow = hot(&allowed, VerifyView::Basic, o);
    for c in &channels {
        for _ in 0..100 {
            one(&allow, c, token).await;
        }
    }
    Prepared {
        channels,
        allowed,
        denied,
    }
}

/// Tenants created, or keys warmed, at once: setup takes seconds, not
/// minutes, and leaves the server's database pool some room.
const SETUP_CONCURRENCY: usize = 64;

/// `n` tenants on one billed plan, a key each; their secrets.
pub async fn long_tail(channels: &[Channel], token: &str, n: usize) -> Vec<String> {
    let tail = plan(&channels[0], token, "bench-tail", 1_000, 2).await;
    stream::iter(0..n)
        .map(|i| tenant_key(&channels[i % channels.len()], token, &tail))
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// One allowed Verify on each key.
pub async fn warm(keys: &[String], channels: &[Channel], token: &str, o: &Options) {
    stream::iter(keys.iter().enumerate())
        .for_each_concurrent(SETUP_CONCURRENCY, |(i, key)| {
            let call = hot(key, VerifyView::Basic, o);
            async move { one(&call, &channels[i % channels.len()], token).await }
        })
        .await;
}

/// The value of the sample `series` (name and labels as written) in the
/// server's `/metrics`.
pub fn scrape_value(addr: &str, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
