//! What the key cache costs in memory: a catalog of many keys on the
//! embedded store, each verified twice through the real Verify use case
//! (the first call loads it into the cache, the second must hit), then the
//! heap the cache holds is read twice: as live bytes counted by this
//! program's allocator, and as the growth of the process's resident set.
//!
//!     cargo bench --bench cache_memory [-- --keys 1000000 --tenants 250000 --plans 4]
//!
//! Then the flood: a fresh cache of 10,000 entries, 1,000 hot keys verified
//! between the calls of 100,000 one-off keys (one each), and the share of
//! hot calls the cache answered.
//!
//! The catalog is written to a database of its own on the PostgreSQL at
//! 127.0.0.1:5432 (or `TOLLGATE_BENCH_POSTGRES`), dropped at the end, so
//! the process holds nothing of it but the secrets it will present, which
//! are allocated before the first reading.
use std::{
    alloc::{GlobalAlloc, Layout},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, TryStreamExt};
use mimalloc::MiMalloc;
use tollgate::{
    catalog::{Catalog, NewKey, NewTenant},
    domain::{
        key::{KeyEnvironment, KeySettings},
        plan::{BillingInterval, Price, Quota, QuotaReset, RateLimit, Slug},
        tenant::{Email, ExternalId, TenantProfile},
        verify::{VerifyCode, VerifyInput},
    },
    limiter::local::LocalLimiter,
    store::sql::SqlStore,
    telemetry::metrics::{CacheMetrics, UsageMetrics},
    verifier::{EntitlementCache, Verifier},
};

/// The server's allocator (mimalloc, as `src/main.rs` sets), counting the
/// bytes it has handed out and not had back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn resident_bytes() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<isize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Calls in flight while the catalog is written and first read.
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys = arg("--keys", 1_000_000);
    let tenants = arg("--tenants", 250_000).clamp(1, keys);
    let plans = arg("--plans", 4).clamp(1, tenants);

    let server = std::env::var("TOLLGATE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("tollgate_bench_cache_{}", uuid::Uuid::now_v7().simple());
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{server}/postgres")).await?;
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await?;
    let result = run(&format!("{server}/{name}"), keys, tenants, plans).await;
    sqlx::Executor::execute(
        &mut admin,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
    )
    .await?;
    result
}

async fn run(url: &str, keys: usize, tenants: usize, plans: usize) -> anyhow::Result<()> {
    // Commits need not wait for the disk: the catalog is thrown away.
    let url = format!("{url}?options=-c%20synchronous_commit%3Doff");
    let store = Arc::new(SqlStore::open(&url, CONCURRENCY as u32).await?);
    let catalog = Catalog::new(store.clone());
    let started = Instant::now();
    let mut plan_ids = Vec::new();
    for p in 0..plans {
        let plan = catalog
            .create_plan(
                Slug::parse("slug", &format!("plan-{p}")).expect("slug"),
                tollgate::domain::plan::PlanSpec {
                    display_name: format!("Plan {p}"),
                    price: Price::parse(4_900, "USD").expect("price"),
                    billing_interval: BillingInterval::Month,
                    trial_days: 14,
                    rate_limit: RateLimit::parse(600_000, 1_000).expect("rate limit"),
                    quotas: vec![
                        Quota::parse(
                            "chat_requests",
                            10_000,
                            Some(tollgate::domain::plan::Overage::HardCap),
                        )
                        .expect("quota"),
                    ],
                    features: tollgate::domain::plan::Feature::parse_list(
                        "features",
                        &["model:gpt-4o".to_owned()],
                    )
                    .expect("features"),
                    quota_reset: QuotaReset::CalendarMonth { day: 1 },
                },
            )
            .await?;
        plan_ids.push(plan.id);
    }
    let tenant_ids: Vec<_> = futures_util::stream::iter(0..tenants)
        .map(|t| {
            let (catalog, plan_id) = (&catalog, plan_ids[t % plans]);
            async move {
                let profile = TenantProfile {
                    external_id: Some(
                        ExternalId::parse("external_id", &format!("cus_{t:08}")).expect("id"),
                    ),
                    email: Some(
                        Email::parse("email", &format!("ops{t}@example.com")).expect("email"),
                    ),
                    name: format!("Tenant {t}"),
                    company: format!("Company {t} Ltd"),
                    metadata: Default::default(),
                };
                let new = NewTenant {
                    profile,
                    plan_id,
                    status: None,
                    trial_end: None,
                };
                catalog.create_tenant(new).await.map(|tenant| tenant.id)
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    // Secrets kept as fixed-size arrays, allocated before the first reading.
    let secrets: Vec<[u8; 64]> = futures_util::stream::iter(0..keys)
        .map(|k| {
            let (catalog, tenant_id) = (&catalog, tenant_ids[k % tenants]);
            async move {
                let new = NewKey {
                    tenant_id,
                    environment: KeyEnvironment::Live,
                    settings: KeySettings {
                        name: format!("production {k}"),
                        ..KeySettings::default()
                    },
                };
                let issued = catalog.create_key(new).await?;
                let secret = issued.secret.expose().as_bytes();
                let mut fixed = [0u8; 64];
                fixed[..secret.len()].copy_from_slice(secret);
                Ok::<_, tollgate::domain::Error>(fixed)
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    println!(
        "catalog: {plans} plans, {tenants} tenants, {keys} keys, built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (live_before, resident_before) = (LIVE.load(Ordering::Relaxed), resident_bytes());
    let metrics = CacheMetrics::default();
    let cache = Arc::new(EntitlementCache::new(
        Duration::from_secs(3_600),
        Duration::from_secs(3_600),
        keys,
        metrics.clone(),
    ));
    let limiter = Arc::new(LocalLimiter::new(store.clone(), UsageMetrics::default()));
    // Memory is measured here, not latency: no read is cut short.
    let verifier = Verifier::new(store.clone(), cache.clone(), limiter, store.clone())
        .with_read_budget(Duration::from_secs(60));
    let started = Instant::now();
    let mut hits = 0usize;
    for pass in 0..2 {
        let misses_before = metrics.misses.get();
        futures_util::stream::iter(&secrets)
            .map(|secret| {
                let verifier = &verifier;
                async move {
                    let verdict = verifier.verify(&input(secret)?).await?;
                    anyhow::ensure!(verdict.code == VerifyCode::Valid, "every key verifies");
                    Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        if pass == 1 {
            hits = keys - (metrics.misses.get() - misses_before) as usize;
        }
    }
    let (live_after, resident_after) = (LIVE.load(Ordering::Relaxed), resident_bytes());
    println!(
        "verified every key twice in {:.1} s; cache entries {}; second pass hits {hits} of {keys} ({:.2}%)",
        started.elapsed().as_secs_f64(),
        cache.len(),
        100.0 * hits as f64 / keys as f64
    );
    let live = live_after - live_before;
    let resident = resident_after - resident_before;
    println!(
        "cache holds {:.1} MiB of heap ({:.0} bytes per key); resident set grew {:.1} MiB ({:.0} bytes per key)",
        mib(live),
        live as f64 / keys as f64,
        mib(resident),
        resident as f64 / keys as f64
    );
    drop((verifier, cache));
    flood(store, &secrets).await
}

fn input(secret: &[u8; 64]) -> anyhow::Result<VerifyInput> {
    let end = secret.iter().position(|&b| b == 0).unwrap_or(secret.len());
    Ok(VerifyInput {
        secret: std::str::from_utf8(&secret[..end])?.to_owned(),
        resource: None,
        units: 1,
        required_features: Vec::new(),
        credits: None,
    })
}

const FLOOD_CACHE: usize = 10_000;
const HOT: usize = 1_000;
const ONE_OFF: usize = 100_000;

/// The hot keys' hit rate while one-off keys pour through a small cache.
/// One call at a time, so the misses around each hot call are its own.
async fn flood(store: Arc<SqlStore>, secrets: &[[u8; 64]]) -> anyhow::Result<()> {
    if secrets.len() < HOT + ONE_OFF {
        println!("flood: skipped (needs {} keys)", HOT + ONE_OFF);
        return Ok(());
    }
    let metrics = CacheMetrics::default();
    let cache = Arc::new(EntitlementCache::new(
        Duration::from_secs(3_600),
        Duration::from_secs(3_600),
        FLOOD_CACHE,
        metrics.clone(),
    ));
    let limiter = Arc::new(LocalLimiter::new(store.clone(), UsageMetrics::default()));
    // Memory is measured here, not latency: no read is cut short.
    let verifier = Verifier::new(store.clone(), cache.clone(), limiter, store.clone())
        .with_read_budget(Duration::from_secs(60));
    let (hot, one_off) = secrets[..HOT + ONE_OFF].split_at(HOT);
    // The hot keys are in use before the flood starts.
    for _ in 0..3 {
        for secret in hot {
            verifier.verify(&input(secret)?).await?;
        }
    }
    let started = Instant::now();
    let (mut hot_calls, mut hot_misses) = (0u64, 0u64);
    for (i, secret) in one_off.iter().enumerate() {
        let verdict = verifier.verify(&input(secret)?).await?;
        anyhow::ensure!(verdict.code == VerifyCode::Valid, "every key verifies");
        let before = metrics.misses.get();
        verifier.verify(&input(&hot[i % HOT])?).await?;
        hot_calls += 1;
        hot_misses += metrics.misses.get() - before;
    }
    let hits = hot_calls - hot_misses;
    println!(
        "flood: {ONE_OFF} one-off keys and {hot_calls} calls of {HOT} hot keys through a cache of {FLOOD_CACHE} in {:.1} s; hot hits {hits} of {hot_calls} ({:.2}%); cache entries {}",
        started.elapsed().as_secs_f64(),
        100.0 * hits as f64 / hot_calls as f64,
        cache.len()
    );
    Ok(())
}
