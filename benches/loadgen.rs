//! The load generator: in one run against one server, a no-op unary RPC
//! (health Check, served by the same server) and Verify workloads:
//!
//! - hot tenant BASIC: one tenant's key, quota far from its cap, the BASIC
//!   answer;
//! - hot tenant FULL: the same key, the FULL answer (features and headers);
//! - denied: a tenant whose quota is spent;
//! - long tail: `--tenants` tenants on one plan, a key each, each call on one
//!   of them at random;
//! - cold tenant at 1 call/s: a long-tail tenant idle for seconds (its lease
//!   expired) against the no-op at 1 call/s: what an idle replica's Redis
//!   round trip adds.
//!
//! For each: throughput, p50 and p99 and their ratios to the no-op, CPU per
//! call of the server, Redis and the load generator, and Redis scripts run
//! per call; at full load, and the hot tenant BASIC also at half the no-op's
//! peak rate; the Redis commands each hot BASIC Verify costs; and the cost of
//! metrics: hot BASIC Verify on two fresh servers alike but for `/metrics`,
//! in rounds alternating between them (off, on, on, off, ...), so drift and
//! order hit both alike (skipped with `--skip-metrics`).
//!
//!     cargo bench --bench loadgen -- [--seconds 5] [--connections 4] [--in-flight 32]
//!         [--tenants 10000] [--full-decode] [--skip-metrics]
//!         [--database-url postgres://postgres@127.0.0.1:5432] [--redis-url redis://127.0.0.1:6379]
//!
//! It starts the release `tollgate` binary on a fresh PostgreSQL database and
//! the given Redis, with an admin token of its own, and drops the database
//! after.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use tokio::sync::Barrier;
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, Key, Plan, Price, Quota, QuotaReset,
    RateLimit, Tenant, VerifyCode, VerifyRequest, VerifyView, billing_client::BillingClient,
    keys_client::KeysClient, plans_client::PlansClient, quota_reset, verify_client::VerifyClient,
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Clone)]
struct Options {
    seconds: u64,
    connections: usize,
    in_flight: usize,
    database_url: String,
    redis_url: String,
    /// Decode every Verify answer whole, as a gateway forwarding its headers
    /// would, instead of only `valid` and `code`.
    full_decode: bool,
    /// Tenants of the long tail.
    tenants: usize,
    skip_metrics: bool,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        connections: 4,
        in_flight: 32,
        database_url: "postgres://postgres@127.0.0.1:5432".into(),
        redis_url: "redis://127.0.0.1:6379".into(),
        full_decode: false,
        tenants: 10_000,
        skip_metrics: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let number = || {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--seconds" => o.seconds = number() as u64,
            "--connections" => o.connections = number(),
            "--in-flight" => o.in_flight = number(),
            "--database-url" => o.database_url = value,
            "--redis-url" => o.redis_url = value,
            "--tenants" => o.tenants = number(),
            "--full-decode" => {
                o.full_decode = true;
                i += 1;
                continue;
            }
            "--skip-metrics" => {
                o.skip_metrics = true;
                i += 1;
                continue;
            }
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// The server under test, stopped and its database dropped on drop.
struct Target {
    child: Child,
    addr: String,
    /// Where `/metrics` is served, when it is.
    metrics_addr: Option<String>,
    admin_url: String,
    db: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let (admin_url, db) = (self.admin_url.clone(), self.db.clone());
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
                })
        })
        .join();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

async fn start(o: &Options, token: &str, prefix: &str, metrics: bool) -> Target {
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

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A plan with `included` units (hard cap or billed); its id.
async fn plan(channel: &Channel, token: &str, slug: &str, included: i64, policy: i32) -> String {
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
async fn tenant_key(channel: &Channel, token: &str, plan_id: &str) -> String {
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

#[derive(Clone)]
enum Call {
    Noop,
    Verify {
        /// Each call takes one at random (one only: a hot tenant).
        secrets: Arc<[String]>,
        view: VerifyView,
        expect: VerifyCode,
        whole: bool,
    },
    /// A Verify refused at the feature check, before the limiter: it loads
    /// the key's entitlements (the server forgets them after
    /// `key_cache_seconds`, 5 by default) and leaves its lease alone.
    Touch(String),
}

impl Call {
    fn verify(secrets: Vec<String>, view: VerifyView, expect: VerifyCode, whole: bool) -> Self {
        Call::Verify {
            secrets: secrets.into(),
            view,
            expect,
            whole,
        }
    }
}

/// What the load generator reads of a Verify answer unless `--full-decode`:
/// `valid` and `code`; prost skips the rest unparsed. The client shares the
/// machine's two cores with the server, so its decoding would otherwise be
/// charged to the server's throughput. The answer's size is still printed.
#[derive(Clone, PartialEq, prost::Message)]
struct Verdict {
    #[prost(bool, tag = "1")]
    valid: bool,
    #[prost(int32, tag = "2")]
    code: i32,
}

/// The encoded size of one Verify answer, decoded whole.
async fn answer_size(call: &Call, channel: &Channel, token: &str) -> usize {
    use prost::Message;
    let Call::Verify { secrets, view, .. } = call else {
        return 0;
    };
    VerifyClient::new(channel.clone())
        .verify(authed(
            VerifyRequest {
                key: secrets[0].clone(),
                resource: "calls".into(),
                units: Some(0),
                view: *view as i32,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .encoded_len()
}

/// One call on `channel`; panics on a wrong answer, so a figure is never
/// measured on wrong answers.
async fn one(call: &Call, channel: &Channel, token: &str) {
    if let Err(status) = attempt(call, channel, token).await {
        panic!("{status}");
    }
}

/// One call; a failed call (overload, time budget) is an error, a wrong
/// answer a panic.
async fn attempt(call: &Call, channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    match call {
        Call::Noop => {
            // With the same credential header as Verify: every call to the
            // service carries one, so the no-op carries it too.
            HealthClient::new(channel.clone())
                .check(authed(HealthCheckRequest::default(), token))
                .await?;
        }
        Call::Verify {
            secrets,
            view,
            expect,
            whole,
        } => {
            let request = VerifyRequest {
                key: secrets[rand::random_range(0..secrets.len())].clone(),
                resource: "calls".into(),
                view: *view as i32,
                ..Default::default()
            };
            let code = verify(request, channel, token, *whole).await?;
            assert_eq!(code, *expect as i32, "unexpected Verify answer");
        }
        Call::Touch(secret) => {
            let request = VerifyRequest {
                key: secret.clone(),
                resource: "calls".into(),
                required_features: vec!["bench:absent".into()],
                ..Default::default()
            };
            let code = verify(request, channel, token, false).await?;
            assert_eq!(
                code,
                VerifyCode::FeatureNotInPlan as i32,
                "unexpected Verify answer"
            );
        }
    }
    Ok(())
}

/// A Verify answer's code, the answer decoded whole or not.
async fn verify(
    request: VerifyRequest,
    channel: &Channel,
    token: &str,
    whole: bool,
) -> Result<i32, tonic::Status> {
    let request = authed(request, token);
    if whole {
        return Ok(VerifyClient::new(channel.clone())
            .verify(request)
            .await?
            .into_inner()
            .code);
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/tollgate.v1.Verify/Verify"),
            tonic_prost::ProstCodec::<VerifyRequest, Verdict>::default(),
        )
        .await?
        .into_inner()
        .code)
}

struct Figures {
    /// CPU time per call of the server, Redis and this load generator, µs.
    cpu: [f64; 3],
    /// Calls that failed (only an open loop tolerates them).
    failed: usize,
    calls: usize,
    per_second: f64,
    p50_micros: u64,
    p99_micros: u64,
    /// Calls Redis served meanwhile, by command (INFO, ours, left out).
    redis: Vec<(String, u64, u64)>,
}

impl Figures {
    /// Redis scripts run per call: EVALSHA, and EVAL when Redis had lost
    /// the script.
    fn scripts(&self) -> f64 {
        let scripts: u64 = self
            .redis
            .iter()
            .filter(|(name, _, _)| name == "evalsha" || name == "eval")
            .map(|(_, calls, _)| calls)
            .sum();
        scripts as f64 / self.calls as f64
    }
}

fn figures(mut latencies: Vec<u64>, elapsed: Duration) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        cpu: [0.0; 3],
        failed: 0,
        calls: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_micros: at(0.50),
        p99_micros: at(0.99),
        redis: Vec::new(),
    }
}

/// As fast as it goes: `in_flight` callers on each connection.
async fn closed_loop(call: &Call, channels: &[Channel], token: &str, o: &Options) -> Figures {
    let duration = Duration::from_secs(o.seconds);
    let barrier = Arc::new(Barrier::new(channels.len() * o.in_flight + 1));
    let mut tasks = Vec::new();
    for channel in channels {
        for _ in 0..o.in_flight {
            let (call, channel, token, barrier) = (
                call.clone(),
                channel.clone(),
                token.to_owned(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                barrier.wait().await;
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    let started = Instant::now();
                    one(&call, &channel, &token).await;
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                latencies
            }));
        }
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    figures(all, started.elapsed())
}

/// At a fixed rate, whatever the answers' latency: each call is timed from
/// when it was due, so a slow answer cannot hide the calls queued behind it.
async fn open_loop(
    call: &Call,
    channels: &[Channel],
    token: &str,
    o: &Options,
    rate: f64,
) -> Figures {
    let duration = Duration::from_secs(o.seconds);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * duration.as_secs_f64()) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (call, channel, token, tx) = (
            call.clone(),
            channels[i % channels.len()].clone(),
            token.to_owned(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let ok = attempt(&call, &channel, &token).await.is_ok();
            let _ = tx.send((ok, due.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let (mut all, mut failed) = (Vec::with_capacity(total), 0);
    while let Some((ok, l)) = rx.recv().await {
        all.push(l);
        failed += usize::from(!ok);
    }
    let mut f = figures(all, started.elapsed());
    f.failed = failed;
    f
}

/// One call a second on each key of `keys` in turn, each just after a
/// `Touch` of that key, so that the key is found in the server's cache and
/// the figure is the limiter's alone.
async fn one_per_second(
    keys: &[String],
    call: impl Fn(&str) -> Call,
    channel: &Channel,
    token: &str,
) -> Figures {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        tokio::time::sleep_until((started + Duration::from_secs(i as u64)).into()).await;
        one(&Call::Touch(key.clone()), channel, token).await;
        let (call, at) = (call(key), Instant::now());
        one(&call, channel, token).await;
        latencies.push(at.elapsed().as_micros() as u64);
    }
    figures(latencies, started.elapsed())
}

/// The Redis server's process id (for its CPU time; 0 when not local).
fn redis_pid(url: &str) -> u32 {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("Redis is not reachable: start it or pass --redis-url");
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// Calls Redis has served so far and the µs it spent in them, by command.
fn redis_calls(url: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("Redis is not reachable: start it or pass --redis-url");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(key))?
                    .parse::<u64>()
                    .ok()
            };
            Some((name.to_owned(), (field("calls=")?, field("usec=")?)))
        })
        .collect()
}

fn line(name: &str, f: &Figures, noop: &Figures) {
    println!(
        "{name:<28} {:>9.0}/s {:>8} µs {:>8} µs   throughput {:>5.1}%   p99 {:>4.2}x   cpu/call µs: server {:>5.1} redis {:>5.1} loadgen {:>5.1}   scripts/call {:>6.3}   ({} calls, {} failed)",
        f.per_second,
        f.p50_micros,
        f.p99_micros,
        100.0 * f.per_second / noop.per_second,
        f.p99_micros as f64 / noop.p99_micros as f64,
        f.cpu[0],
        f.cpu[1],
        f.cpu[2],
        f.scripts(),
        f.calls,
        f.failed,
    );
}

/// CPU time a process has used so far, µs (user + system, from /proc).
fn cpu_micros(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Runs a phase and charges each process's CPU time to its calls, and
/// notes the Redis calls made meanwhile.
async fn measured(
    pids: [u32; 3],
    redis_url: &str,
    phase: impl std::future::Future<Output = Figures>,
) -> Figures {
    let redis_before = redis_calls(redis_url);
    let before = pids.map(cpu_micros);
    let mut f = phase.await;
    for i in 0..3 {
        f.cpu[i] = (cpu_micros(pids[i]) - before[i]) / f.calls as f64;
    }
    // Commands a script runs count in commandstats too; they are not round
    // trips. The flusher's own (ping, mget, scan) run beside the calls.
    f.redis = redis_calls(redis_url)
        .into_iter()
        .map(|(name, (calls, usec))| {
            let (c, u) = redis_before.get(&name).copied().unwrap_or((0, 0));
            (name, calls - c, usec - u)
        })
        .filter(|(name, n, _)| *n > 0 && name != "info")
        .collect();
    f.redis.sort();
    f
}

/// A server's connections, its allowed key (warm) and its denied key.
struct Prepared {
    channels: Vec<Channel>,
    allowed: String,
    denied: String,
}

async fn prepare(o: &Options, target: &Target, token: &str) -> Prepared {
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

/// Allowed Verify on one key.
fn hot(secret: &str, view: VerifyView, o: &Options) -> Call {
    Call::verify(vec![secret.into()], view, VerifyCode::Valid, o.full_decode)
}

/// Tenants created, or keys warmed, at once: setup takes seconds, not
/// minutes, and leaves the server's database pool some room.
const SETUP_CONCURRENCY: usize = 64;

/// `n` tenants on one billed plan, a key each; their secrets.
async fn long_tail(channels: &[Channel], token: &str, n: usize) -> Vec<String> {
    let tail = plan(&channels[0], token, "bench-tail", 1_000, 2).await;
    stream::iter(0..n)
        .map(|i| tenant_key(&channels[i % channels.len()], token, &tail))
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// One allowed Verify on each key.
async fn warm(keys: &[String], channels: &[Channel], token: &str, o: &Options) {
    stream::iter(keys.iter().enumerate())
        .for_each_concurrent(SETUP_CONCURRENCY, |(i, key)| {
            let call = hot(key, VerifyView::Basic, o);
            async move { one(&call, &channels[i % channels.len()], token).await }
        })
        .await;
}

/// The value of the sample `series` (name and labels as written) in the
/// server's `/metrics`.
fn scrape_value(addr: &str, series: &str) -> Option<f64> {
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

#[tokio::main]
async fn main() {
    let o = options();
    // A different key per call, from keys idle since the long tail's warm-up.
    let cold_calls = (o.seconds as usize).max(5);
    assert!(
        o.tenants > cold_calls,
        "--tenants must be more than {cold_calls}"
    );
    let token = format!("bench-admin-{}", uuid::Uuid::now_v7().simple());
    let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let target = start(&o, &token, &prefix, false).await;
    let Prepared {
        channels,
        allowed,
        denied,
    } = prepare(&o, &target, &token).await;
    let noop = Call::Noop;
    let basic = hot(&allowed, VerifyView::Basic, &o);
    let full = hot(&allowed, VerifyView::Full, &o);
    // Spend the denied tenant's one unit; every call after is over the cap.
    one(
        &Call::verify(
            vec![denied.clone()],
            VerifyView::Basic,
            VerifyCode::Valid,
            true,
        ),
        &channels[0],
        &token,
    )
    .await;
    let deny = Call::verify(
        vec![denied],
        VerifyView::Basic,
        VerifyCode::QuotaExceeded,
        o.full_decode,
    );
    // Warm up connections, caches and the script cache.
    for call in [&noop, &basic, &full, &deny] {
        for c in &channels {
            for _ in 0..100 {
                one(call, c, &token).await;
            }
        }
    }

    println!(
        "tollgate loadgen: {} connections x {} in flight, {} s per phase, server {} (release, key_cache_seconds 600), PostgreSQL + Redis",
        o.connections, o.in_flight, o.seconds, target.addr
    );
    let mut sizes = Vec::new();
    for call in [&basic, &full, &deny] {
        sizes.push(answer_size(call, &channels[0], &token).await);
    }
    println!(
        "Verify answers: {} bytes allowed BASIC, {} bytes allowed FULL, {} bytes denied; the load generator decodes {}",
        sizes[0],
        sizes[1],
        sizes[2],
        if o.full_decode {
            "them whole (--full-decode)"
        } else {
            "valid and code (--full-decode for all)"
        }
    );
    println!(
        "{:<28} {:>11} {:>11} {:>11}",
        "full load", "throughput", "p50", "p99"
    );
    let pids = [
        target.child.id(),
        redis_pid(&o.redis_url),
        std::process::id(),
    ];
    let peak = |call: &Call| {
        let call = call.clone();
        let (channels, token, o) = (&channels, &token, &o);
        async move { measured(pids, &o.redis_url, closed_loop(&call, channels, token, o)).await }
    };
    let noop_peak = peak(&noop).await;
    line("no-op (health Check)", &noop_peak, &noop_peak);
    let basic_peak = peak(&basic).await;
    line("hot tenant BASIC", &basic_peak, &noop_peak);
    let full_peak = peak(&full).await;
    line("hot tenant FULL", &full_peak, &noop_peak);
    let deny_peak = peak(&deny).await;
    line("denied (spent quota)", &deny_peak, &noop_peak);

    let rate = noop_peak.per_second / 2.0;
    println!("\nat half the no-op's peak: {rate:.0} calls/s, latency from when each call was due");
    let noop_half = measured(
        pids,
        &o.redis_url,
        open_loop(&noop, &channels, &token, &o, rate),
    )
    .await;
    line("no-op (health Check)", &noop_half, &noop_half);
    let basic_half = measured(
        pids,
        &o.redis_url,
        open_loop(&basic, &channels, &token, &o, rate),
    )
    .await;
    line("hot tenant BASIC", &basic_half, &noop_half);

    let setup = Instant::now();
    let keys = long_tail(&channels, &token, o.tenants).await;
    let created = setup.elapsed();
    warm(&keys, &channels, &token, &o).await;
    let (cold_keys, tail_keys) = keys.split_at(cold_calls);
    println!(
        "\nlong tail: {} tenants on one plan, a key each, created in {:.1} s and warmed (one Verify each) in {:.1} s; calls at random over {} of them ({} kept idle for the cold tenant)",
        o.tenants,
        created.as_secs_f64(),
        (setup.elapsed() - created).as_secs_f64(),
        tail_keys.len(),
        cold_calls,
    );
    let tail = Call::verify(
        tail_keys.to_vec(),
        VerifyView::Basic,
        VerifyCode::Valid,
        o.full_decode,
    );
    let tail_peak = peak(&tail).await;
    line(
        &format!("long tail ({} tenants)", tail_keys.len()),
        &tail_peak,
        &noop_peak,
    );

    // Let the long tail's leases expire and its renewals end: Redis idle.
    tokio::time::sleep(IDLE).await;
    println!(
        "\none call a second, {cold_calls} calls, each on its own long-tail key (found in the server's cache, not called since the warm-up: its lease expired); cpu per call is clock ticks of 10 ms over a few calls: noise"
    );
    let noop_slow = measured(
        pids,
        &o.redis_url,
        one_per_second(cold_keys, |_| Call::Noop, &channels[0], &token),
    )
    .await;
    line("no-op at 1 call/s", &noop_slow, &noop_slow);
    let cold = measured(
        pids,
        &o.redis_url,
        one_per_second(
            cold_keys,
            |key| hot(key, VerifyView::Basic, &o),
            &channels[0],
            &token,
        ),
    )
    .await;
    line("cold tenant at 1 call/s", &cold, &noop_slow);

    for (name, f) in [("hot tenant BASIC", &basic_peak), ("long tail", &tail_peak)] {
        let evalsha = f
            .redis
            .iter()
            .find(|(n, _, _)| n == "evalsha")
            .map_or(0, |(_, c, _)| *c);
        println!(
            "\nRedis during the {name} phase: {} Verify calls, {} EVALSHA = {:.4} per call",
            f.calls,
            evalsha,
            evalsha as f64 / f.calls as f64,
        );
        // Time inside commands only (not protocol or syscalls): where a
        // script's cost goes, per Verify call.
        println!(
            "  commandstats deltas, calls and µs inside per Verify call (a script's own commands count too): {}",
            f.redis
                .iter()
                .map(|(n, c, u)| format!("{n} {c} ({:.2} µs)", *u as f64 / f.calls as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    drop(target);
    if !o.skip_metrics {
        metrics_cost(&o, &token, &prefix, pids, &noop_peak).await;
    }
}

/// Longer than a lease lives (2 s), with a margin.
const IDLE: Duration = Duration::from_secs(3);

/// The cost of metrics: the same calls on two fresh servers alike but for
/// /metrics, alternating. `pids` are Redis's and ours beside the first
/// server's.
async fn metrics_cost(o: &Options, token: &str, prefix: &str, pids: [u32; 3], noop: &Figures) {
    let plain = start(o, token, &format!("{prefix}-off"), false).await;
    let metered = start(o, token, &format!("{prefix}-on"), true).await;
    let sides = [
        ("metrics off", prepare(o, &plain, token).await, &plain),
        ("metrics on", prepare(o, &metered, token).await, &metered),
    ]
    .map(|(name, side, target)| {
        let allow = hot(&side.allowed, VerifyView::Basic, o);
        (name, side.channels, allow, target.child.id())
    });
    // A fresh server's first seconds at full load are slower (buffers and
    // pools growing): a phase on each first, not counted.
    for (_, channels, allow, _) in &sides {
        let warm_up = Options {
            seconds: 2,
            ..o.clone()
        };
        closed_loop(allow, channels, token, &warm_up).await;
    }
    println!(
        "\nmetrics off and on: hot tenant BASIC at full load on two fresh servers, {} phases alternating off, on, on, off, ... (after an uncounted 2 s on each)",
        2 * ROUNDS
    );
    // Calls, seconds and server CPU µs, off then on; and each phase's rate.
    let mut totals = [(0usize, 0.0f64, 0.0f64); 2];
    let mut rates: [Vec<f64>; 2] = Default::default();
    for phase in 0..2 * ROUNDS {
        let i = (phase + phase / 2) % 2;
        let (name, channels, allow, pid) = &sides[i];
        let f = measured(
            [*pid, pids[1], pids[2]],
            &o.redis_url,
            closed_loop(allow, channels, token, o),
        )
        .await;
        line(name, &f, noop);
        totals[i].0 += f.calls;
        totals[i].1 += f.calls as f64 / f.per_second;
        totals[i].2 += f.cpu[0] * f.calls as f64;
        rates[i].push(f.per_second);
    }
    let rate = |(calls, seconds, _): (usize, f64, f64)| calls as f64 / seconds;
    let cpu = |(calls, _, cpu): (usize, f64, f64)| cpu / calls as f64;
    println!(
        "metrics on / off: throughput {:.1}% ({:.0}/s vs {:.0}/s), server cpu per call {:.1} vs {:.1} µs",
        100.0 * rate(totals[1]) / rate(totals[0]),
        rate(totals[1]),
        rate(totals[0]),
        cpu(totals[1]),
        cpu(totals[0]),
    );
    let spread = |r: &[f64]| {
        let (min, max) = r
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        100.0 * (max - min) / min
    };
    println!(
        "  phase-to-phase spread on one server: {:.1}% (metrics off), {:.1}% (metrics on)",
        spread(&rates[0]),
        spread(&rates[1]),
    );
    let addr = metered.metrics_addr.as_deref().expect("metrics on");
    println!(
        "  the metered server counted {} VALID decisions (tollgate_verify_decisions_total) and {} Verify calls answered OK (grpc_server_handled_total)",
        scrape_value(addr, "tollgate_verify_decisions_total{code=\"VALID\"}").unwrap_or(-1.0),
        scrape_value(
            addr,
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"tollgate.v1.Verify\",grpc_method=\"Verify\",grpc_code=\"OK\"}"
        )
        .unwrap_or(-1.0),
    );
}

/// Rounds of the metrics comparison, each a phase on either server.
const ROUNDS: usize = 5;
