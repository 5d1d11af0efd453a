//! Driving calls at a server: as fast as they go (closed loop), at a fixed
//! rate (open loop), or one a second; and what a phase measured.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Barrier;
use tonic::transport::Channel;

use crate::{
    Options,
    calls::{Call, attempt, one},
};

pub struct Figures {
    /// CPU time per call of each process (`measure::CPU_COLUMNS`), µs.
    pub cpu: [f64; 4],
    /// Calls that failed (only an open loop tolerates them).
    pub failed: usize,
    pub calls: usize,
    pub per_second: f64,
    pub p50_micros: u64,
    pub p99_micros: u64,
    /// Calls Redis served meanwhile, by command (INFO, ours, left out).
    pub redis: Vec<(String, u64, u64)>,
}

impl Figures {
    /// Redis scripts run per call: EVALSHA, and EVAL when Redis had lost
    /// the script.
    pub fn scripts(&self) -> f64 {
        let scripts: u64 = self
            .redis
            .iter()
            .filter(|(name, _, _)| name == "evalsha" || name == "eval")
            .map(|(_, calls, _)| calls)
            .sum();
        scripts as f64 / self.calls as f64
    }

    /// Two phases' figures as one, as if run back to back: `noop` around a
    /// workload, so drift between phases hits both sides alike.
    pub fn pooled(a: &Figures, b: &Figures) -> Figures {
        let calls = a.calls + b.calls;
        let seconds = a.calls as f64 / a.per_second + b.calls as f64 / b.per_second;
        let weigh = |x: f64, y: f64| (x * a.calls as f64 + y * b.calls as f64) / calls as f64;
        Figures {
            cpu: std::array::from_fn(|i| weigh(a.cpu[i], b.cpu[i])),
            failed: a.failed + b.failed,
            calls,
            per_second: calls as f64 / seconds,
            p50_micros: weigh(a.p50_micros as f64, b.p50_micros as f64) as u64,
            p99_micros: weigh(a.p99_micros as f64, b.p99_micros as f64) as u64,
            redis: Vec::new(),
        }
    }
}

fn figures(mut latencies: Vec<u64>, elapsed: Duration) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        cpu: [0.0; 4],
        failed: 0,
        calls: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_micros: at(0.50),
        p99_micros: at(0.99),
        redis: Vec::new(),
    }
}

/// As fast as it goes: `in_flight` callers on each connection.
pub async fn closed_loop(call: &Call, channels: &[Channel], token: &str, o: &Options) -> Figures {
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
/// The same callers as the closed loop take the calls in turn (call `i` is
/// due at `i / rate`), so the load generator costs per call what it does
/// there: a task spawned per call would cost it twice that, and at half
/// the no-op's rate fill the machine.
pub async fn open_loop(
    call: &Call,
    channels: &[Channel],
    token: &str,
    o: &Options,
    rate: f64,
) -> Figures {
    let total = (rate * o.seconds as f64) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        for _ in 0..o.in_flight {
            let (call, channel, token, next) = (
                call.clone(),
                channel.clone(),
                token.to_owned(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::with_capacity(1 << 12), 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return (latencies, failed);
                    }
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    failed += usize::from(attempt(&call, &channel, &token).await.is_err());
                    latencies.push(due.elapsed().as_micros() as u64);
                }
            }));
        }
    }
    let (mut all, mut failed) = (Vec::with_capacity(total), 0);
    for t in tasks {
        let (latencies, f) = t.await.unwrap();
        all.extend(latencies);
        failed += f;
    }
    let mut f = figures(all, started.elapsed());
    f.failed = failed;
    f
}

/// One call a second on each key of `keys` in turn, each just after a
/// `Touch` of that key, so that the key is found in the server's cache and
/// the figure is the limiter's alone.
pub async fn one_per_second(
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
