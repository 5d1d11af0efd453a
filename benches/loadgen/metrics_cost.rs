//! The cost of metrics: hot BASIC Verify on two fresh servers alike but for
//! `/metrics`, in rounds alternating between them.
use crate::{
    Options,
    drive::{Figures, closed_loop},
    hot,
    measure::{Procs, line, measured},
    target::{prepare, scrape_value, start},
};
use tollgate::grpc::pb::VerifyView;

/// The cost of metrics: the same calls on two fresh servers alike but for
/// /metrics, alternating. `procs` are the first server's (Redis's and ours
/// are shared).
pub async fn metrics_cost(o: &Options, token: &str, prefix: &str, procs: Procs, noop: &Figures) {
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
            Procs {
                server: *pid,
                ..procs
            },
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
