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
//! call of the server, Redis, PostgreSQL and the load generator, and Redis
//! scripts run per call; at full load, and the hot tenant BASIC also at half
//! the no-op's peak rate; the Redis commands each hot BASIC and long-tail
//! Verify costs; and the cost of
//! metrics: hot BASIC Verify on two fresh servers alike but for `/metrics`,
//! in rounds alternating between them (off, on, on, off, ...), so drift and
//! order hit both alike (skipped with `--skip-metrics`).
//!
//!     cargo bench --bench loadgen -- [--seconds 5] [--connections 4] [--in-flight 32]
//!         [--tenants 10000] [--full-decode] [--skip-metrics] [--only PHASES]
//!         [--database-url postgres://postgres@127.0.0.1:5432] [--redis-url redis://127.0.0.1:6379]
//!
//! Every workload phase runs between two no-op phases, and its ratios are to
//! the two pooled: the machine's drift from phase to phase (seen here: 10%
//! over a run) hits the workload and its no-op alike. `--only hot,denied,
//! half,tail,cold` runs some of the workloads.
//!
//! It starts the release `tollgate` binary on a fresh PostgreSQL database and
//! the given Redis, with an admin token of its own, and drops the database
//! after.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod calls;
mod drive;
mod measure;
mod metrics_cost;
mod target;

use std::time::{Duration, Instant};

use calls::{Call, answer_size, one};
use drive::{Figures, closed_loop, one_per_second, open_loop};
use measure::{Procs, line, measured};
use target::{Prepared, long_tail, prepare, start, warm};
use tollgate::grpc::pb::{VerifyCode, VerifyView};

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
    /// Phases to run beside the no-op (all when empty).
    only: Vec<String>,
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
        only: Vec::new(),
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
            "--only" => o.only = value.split(',').map(String::from).collect(),
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

/// Allowed Verify on one key.
fn hot(secret: &str, view: VerifyView, o: &Options) -> Call {
    Call::verify(vec![secret.into()], view, VerifyCode::Valid, o.full_decode)
}

/// Longer than a lease lives (2 s), with a margin.
const IDLE: Duration = Duration::from_secs(3);

/// Runs phases, each after a no-op phase, and prints each against the
/// no-op phases either side of it.
struct Bracketed<'a> {
    o: &'a Options,
    procs: Procs,
    channels: &'a [tonic::transport::Channel],
    token: &'a str,
    /// The no-op phase just run.
    last_noop: Figures,
    /// Every no-op phase's rate, for their spread.
    noop_rates: Vec<f64>,
}

impl<'a> Bracketed<'a> {
    async fn peak(&self, call: &Call) -> Figures {
        measured(
            self.procs,
            &self.o.redis_url,
            closed_loop(call, self.channels, self.token, self.o),
        )
        .await
    }

    async fn start(
        o: &'a Options,
        procs: Procs,
        channels: &'a [tonic::transport::Channel],
        token: &'a str,
    ) -> Self {
        let first = measured(
            procs,
            &o.redis_url,
            closed_loop(&Call::Noop, channels, token, o),
        )
        .await;
        line("no-op (health Check)", &first, &first);
        Self {
            o,
            procs,
            channels,
            token,
            noop_rates: vec![first.per_second],
            last_noop: first,
        }
    }

    /// The workload at full load, then a no-op phase; printed against the
    /// no-op phases before and after it.
    async fn run(&mut self, name: &str, call: &Call) -> Figures {
        let f = self.peak(call).await;
        let after = self.peak(&Call::Noop).await;
        self.noop_rates.push(after.per_second);
        let around = Figures::pooled(&self.last_noop, &after);
        line(name, &f, &around);
        self.last_noop = after;
        f
    }

    /// The no-op phases' rates: lowest, highest and their spread.
    fn spread(&self) {
        let (lo, hi) = self
            .noop_rates
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        println!(
            "no-op phases: {} between {lo:.0}/s and {hi:.0}/s, spread {:.1}%",
            self.noop_rates.len(),
            100.0 * (hi - lo) / lo
        );
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    let runs = |phase: &str| o.only.is_empty() || o.only.iter().any(|p| p == phase);
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
        "{:<28} {:>11} {:>11} {:>11}   (each workload against the no-op phases either side of it)",
        "full load", "throughput", "p50", "p99"
    );
    let procs = Procs::new(target.child.id(), &o.redis_url);
    let mut phases = Bracketed::start(&o, procs, &channels, &token).await;
    let mut basic_peak = None;
    if runs("hot") {
        basic_peak = Some(phases.run("hot tenant BASIC", &basic).await);
        phases.run("hot tenant FULL", &full).await;
    }
    if runs("denied") {
        phases.run("denied (spent quota)", &deny).await;
    }
    if runs("half") {
        let rate = phases.last_noop.per_second / 2.0;
        println!(
            "\nat half the last no-op phase's rate: {rate:.0} calls/s, latency from when each call was due"
        );
        let half = |call: Call| {
            let (channels, token, o) = (&channels, &token, &o);
            async move {
                measured(
                    procs,
                    &o.redis_url,
                    open_loop(&call, channels, token, o, rate),
                )
                .await
            }
        };
        let before = half(Call::Noop).await;
        line("no-op (health Check)", &before, &before);
        let basic_half = half(basic.clone()).await;
        let after = half(Call::Noop).await;
        line(
            "hot tenant BASIC",
            &basic_half,
            &Figures::pooled(&before, &after),
        );
        line("no-op (health Check)", &after, &before);
    }
    let mut tail_peak = None;
    if runs("tail") {
        let setup = Instant::now();
        let keys = long_tail(&channels, &token, o.tenants).await;
        let created = setup.elapsed();
        warm(&keys, &channels, &token, &o).await;
        let tail_keys = &keys[cold_calls..];
        println!(
            "long tail: {} tenants on one plan, a key each, created in {:.1} s and warmed (one Verify each) in {:.1} s; calls at random over {} of them ({} kept idle for the cold tenant)",
            o.tenants,
            created.as_secs_f64(),
            (setup.elapsed() - created).as_secs_f64(),
            tail_keys.len(),
            cold_calls,
        );
        // The warm-up's leases expire before the no-op phase ends.
        let tail = Call::verify(
            tail_keys.to_vec(),
            VerifyView::Basic,
            VerifyCode::Valid,
            o.full_decode,
        );
        tail_peak = Some(
            phases
                .run(&format!("long tail ({} tenants)", tail_keys.len()), &tail)
                .await,
        );
        if runs("cold") {
            // Let the long tail's leases expire and its renewals end: Redis idle.
            tokio::time::sleep(IDLE).await;
            println!(
                "\none call a second, {cold_calls} calls, each on its own long-tail key (found in the server's cache, not called since the warm-up: its lease expired); cpu per call is clock ticks of 10 ms over a few calls: noise"
            );
            let noop_slow = measured(
                procs,
                &o.redis_url,
                one_per_second(&keys[..cold_calls], |_| Call::Noop, &channels[0], &token),
            )
            .await;
            line("no-op at 1 call/s", &noop_slow, &noop_slow);
            let cold = measured(
                procs,
                &o.redis_url,
                one_per_second(
                    &keys[..cold_calls],
                    |key| hot(key, VerifyView::Basic, &o),
                    &channels[0],
                    &token,
                ),
            )
            .await;
            line("cold tenant at 1 call/s", &cold, &noop_slow);
        }
    }
    phases.spread();

    for (name, f) in [("hot tenant BASIC", &basic_peak), ("long tail", &tail_peak)] {
        let Some(f) = f else { continue };
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
        metrics_cost::metrics_cost(&o, &token, &prefix, procs, &phases.last_noop).await;
    }
}
