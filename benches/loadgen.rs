//! The load generator: in one run against one server, a no-op unary RPC
//! (health Check, served by the same server), Verify allowed on a cached
//! key, and Verify denied on a spent quota; throughput, p50 and p99 of each
//! and their ratios to the no-op, at full load and at half the no-op's peak
//! rate; the Redis commands each allowed Verify costs; and the cost of
//! metrics: allowed Verify on two fresh servers alike but for `/metrics`,
//! in rounds alternating between them (off, on, on, off, ...), so drift and
//! order hit both alike.
//!
//!     cargo bench --bench loadgen -- [--seconds 5] [--connections 4] [--in-flight 32]
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

use tokio::sync::Barrier;
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, Key, Plan, Price, Quota, QuotaReset,
    RateLimit, Tenant, VerifyCode, VerifyRequest, billing_client::BillingClient,
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
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        connections: 4,
        in_flight: 32,
        database_url: "postgres://postgres@127.0.0.1:5432".into(),
        redis_url: "redis://127.0.0.1:6379".into(),
        full_decode: false,
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
            "--full-decode" => {
                o.full_decode = true;
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

/// A tenant on a plan with `included` units (hard cap or billed) and a key.
async fn tenant_key(
    channel: &Channel,
    token: &str,
    slug: &str,
    included: i64,
    policy: i32,
) -> String {
    let plan = PlansClient::new(channel.clone())
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
        .into_inner();
    let tenant = BillingClient::new(channel.clone())
        .create_tenant(authed(
            CreateTenantRequest {
                tenant: Some(Tenant {
                    plan_id: plan.id,
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
        secret: String,
        expect: VerifyCode,
        whole: bool,
    },
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
    let Call::Verify { secret, .. } = call else {
        return 0;
    };
    VerifyClient::new(channel.clone())
        .verify(authed(
            VerifyRequest {
                key: secret.clone(),
                resource: "calls".into(),
                units: Some(0),
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
            secret,
            expect,
            whole,
        } => {
            let request = authed(
                VerifyRequest {
                    key: secret.clone(),
                    resource: "calls".into(),
                    units: None,
                    required_features: vec![],
                    ..Default::default()
                },
                token,
            );
            let code = if *whole {
                VerifyClient::new(channel.clone())
                    .verify(request)
                    .await?
                    .into_inner()
                    .code
            } else {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                grpc.unary(
                    request,
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/tollgate.v1.Verify/Verify",
                    ),
                    tonic_prost::ProstCodec::<VerifyRequest, Verdict>::default(),
                )
                .await?
                .into_inner()
                .code
            };
            assert_eq!(code, *expect as i32, "unexpected Verify answer");
        }
    }
    Ok(())
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

/// Calls Redis has served so far, by command.
fn redis_calls(url: &str) -> std::collections::HashMap<String, u64> {
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
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn line(name: &str, f: &Figures, noop: &Figures) {
    println!(
        "{name:<28} {:>9.0}/s {:>8} µs {:>8} µs   throughput {:>5.1}%   p99 {:>4.2}x   cpu/call µs: server {:>5.1} redis {:>5.1} loadgen {:>5.1}   ({} calls, {} failed)",
        f.per_second,
        f.p50_micros,
        f.p99_micros,
        100.0 * f.per_second / noop.per_second,
        f.p99_micros as f64 / noop.p99_micros as f64,
        f.cpu[0],
        f.cpu[1],
        f.cpu[2],
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

/// Runs a phase and charges each process's CPU time to its calls.
async fn measured(pids: [u32; 3], phase: impl std::future::Future<Output = Figures>) -> Figures {
    let before = pids.map(cpu_micros);
    let mut f = phase.await;
    for i in 0..3 {
        f.cpu[i] = (cpu_micros(pids[i]) - before[i]) / f.calls as f64;
    }
    f
}

/// A server's connections and its allowed and denied keys.
struct Prepared {
    channels: Vec<Channel>,
    allow: Call,
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
    let allowed = tenant_key(&channels[0], token, "bench-allowed", 1_000, 2).await;
    let denied = tenant_key(&channels[0], token, "bench-denied", 1, 1).await;
    let allow = Call::Verify {
        secret: allowed,
        expect: VerifyCode::Valid,
        whole: o.full_decode,
    };
    for c in &channels {
        for _ in 0..100 {
            one(&allow, c, token).await;
        }
    }
    Prepared {
        channels,
        allow,
        denied,
    }
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
    let token = format!("bench-admin-{}", uuid::Uuid::now_v7().simple());
    let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let target = start(&o, &token, &prefix, false).await;
    let Prepared {
        channels,
        allow,
        denied,
    } = prepare(&o, &target, &token).await;
    let noop = Call::Noop;
    // Spend the denied tenant's one unit; every call after is over the cap.
    one(
        &Call::Verify {
            secret: denied.clone(),
            expect: VerifyCode::Valid,
            whole: true,
        },
        &channels[0],
        &token,
    )
    .await;
    let deny = Call::Verify {
        secret: denied,
        expect: VerifyCode::QuotaExceeded,
        whole: o.full_decode,
    };
    // Warm up connections, caches and the script cache.
    for call in [&noop, &allow, &deny] {
        for c in &channels {
            for _ in 0..100 {
                one(call, c, &token).await;
            }
        }
    }

    println!(
        "tollgate loadgen: {} connections x {} in flight, {} s per phase, server {} (release), PostgreSQL + Redis",
        o.connections, o.in_flight, o.seconds, target.addr
    );
    let sizes = [
        answer_size(&allow, &channels[0], &token).await,
        answer_size(&deny, &channels[0], &token).await,
    ];
    println!(
        "Verify answers: {} bytes allowed, {} bytes denied; the load generator decodes {}",
        sizes[0],
        sizes[1],
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
    let noop_full = measured(pids, closed_loop(&noop, &channels, &token, &o)).await;
    line("no-op (health Check)", &noop_full, &noop_full);
    let before = redis_calls(&o.redis_url);
    let allow_full = measured(pids, closed_loop(&allow, &channels, &token, &o)).await;
    let after = redis_calls(&o.redis_url);
    line("Verify allowed (cached key)", &allow_full, &noop_full);
    let deny_full = measured(pids, closed_loop(&deny, &channels, &token, &o)).await;
    line("Verify denied (spent quota)", &deny_full, &noop_full);

    let rate = noop_full.per_second / 2.0;
    println!("\nat half the no-op's peak: {rate:.0} calls/s, latency from when each call was due");
    let noop_half = measured(pids, open_loop(&noop, &channels, &token, &o, rate)).await;
    line("no-op (health Check)", &noop_half, &noop_half);
    let allow_half = measured(pids, open_loop(&allow, &channels, &token, &o, rate)).await;
    line("Verify allowed (cached key)", &allow_half, &noop_half);

    // Commands a script runs count in commandstats too; they are not round
    // trips. The flusher's own (ping, mget, scan) run beside the calls.
    let mut delta: Vec<(String, u64)> = after
        .iter()
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(name, n)| *n > 0 && name != "info")
        .collect();
    delta.sort();
    let evalsha = delta
        .iter()
        .find(|(n, _)| n == "evalsha")
        .map_or(0, |(_, c)| *c);
    println!(
        "\nRedis during the allowed phase: {} Verify calls, {} EVALSHA = {:.4} round trips per call",
        allow_full.calls,
        evalsha,
        evalsha as f64 / allow_full.calls as f64,
    );
    println!(
        "  all commandstats deltas (script-internal calls included): {}",
        delta
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The cost of metrics: the same calls on two fresh servers alike but
    // for /metrics, alternating.
    drop(target);
    let plain = start(&o, &token, &format!("{prefix}-off"), false).await;
    let metered = start(&o, &token, &format!("{prefix}-on"), true).await;
    let sides = [
        (
            "metrics off",
            prepare(&o, &plain, &token).await,
            plain.child.id(),
        ),
        (
            "metrics on",
            prepare(&o, &metered, &token).await,
            metered.child.id(),
        ),
    ];
    // A fresh server's first seconds at full load are slower (buffers and
    // pools growing): a phase on each first, not counted.
    for (_, side, _) in &sides {
        let warm_up = Options {
            seconds: 2,
            ..o.clone()
        };
        closed_loop(&side.allow, &side.channels, &token, &warm_up).await;
    }
    println!(
        "\nmetrics off and on: allowed Verify at full load on two fresh servers, {} phases alternating off, on, on, off, ... (after an uncounted 2 s on each)",
        2 * ROUNDS
    );
    // Calls, seconds and server CPU µs, off then on; and each phase's rate.
    let mut totals = [(0usize, 0.0f64, 0.0f64); 2];
    let mut rates: [Vec<f64>; 2] = Default::default();
    for phase in 0..2 * ROUNDS {
        let i = (phase + phase / 2) % 2;
        let (name, side, pid) = &sides[i];
        let f = measured(
            [*pid, pids[1], pids[2]],
            closed_loop(&side.allow, &side.channels, &token, &o),
        )
        .await;
        line(name, &f, &noop_full);
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
