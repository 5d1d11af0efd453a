//! What a phase cost: each process's CPU time (from /proc) and the Redis
//! commands run meanwhile (from `INFO commandstats`), charged to its calls.
use std::collections::HashMap;

use crate::drive::Figures;

/// The processes sharing the machine's cores: the server, Redis, this load
/// generator, and PostgreSQL (all its processes, found anew each phase).
#[derive(Clone, Copy)]
pub struct Procs {
    pub server: u32,
    pub redis: u32,
    pub me: u32,
}

/// Columns of `Figures::cpu`.
pub const CPU_COLUMNS: [&str; 4] = ["server", "redis", "pg", "loadgen"];

impl Procs {
    pub fn new(server: u32, redis_url: &str) -> Self {
        Self {
            server,
            redis: redis_pid(redis_url),
            me: std::process::id(),
        }
    }

    /// CPU time used so far, µs, in `CPU_COLUMNS` order.
    fn cpu(&self) -> [f64; 4] {
        let postgres: f64 = postgres_pids().into_iter().map(cpu_micros).sum();
        [
            cpu_micros(self.server),
            cpu_micros(self.redis),
            postgres,
            cpu_micros(self.me),
        ]
    }
}

/// Every local process named `postgres` (the server and its backends).
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
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
fn redis_calls(url: &str) -> HashMap<String, (u64, u64)> {
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
pub async fn measured(
    procs: Procs,
    redis_url: &str,
    phase: impl std::future::Future<Output = Figures>,
) -> Figures {
    let redis_before = redis_calls(redis_url);
    let before = procs.cpu();
    let mut f = phase.await;
    let after = procs.cpu();
    for i in 0..before.len() {
        f.cpu[i] = (after[i] - before[i]) / f.calls as f64;
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

/// A phase's line: its figures and their ratios to `noop`'s.
pub fn line(name: &str, f: &Figures, noop: &Figures) {
    let cpu: Vec<String> = CPU_COLUMNS
        .iter()
        .zip(f.cpu)
        .map(|(n, c)| format!("{n} {c:>5.1}"))
        .collect();
    println!(
        "{name:<28} {:>9.0}/s {:>8} µs {:>8} µs   throughput {:>5.1}%   p99 {:>4.2}x   cpu/call µs: {}   scripts/call {:>6.3}   ({} calls, {} failed)",
        f.per_second,
        f.p50_micros,
        f.p99_micros,
        100.0 * f.per_second / noop.per_second,
        f.p99_micros as f64 / noop.p99_micros as f64,
        cpu.join(" "),
        f.scripts(),
        f.calls,
        f.failed,
    );
}
