//! In-process microbenchmarks of the routing decision and the ranking rebuild, on fleets built
//! through the proxy's public API (config parse, `AppState`, samples validated by ingest and
//! recorded, the ranking and routing table rebuilt as the proxy rebuilds them), timed call by
//! call so the report can quote medians and tails.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use wes_proto::{Model, ModelList, ProbeResult, Sample, SensorKind, ThermalState};
use wes_proxy::config::Config;
use wes_proxy::fleet::InFlightGuard;
use wes_proxy::policy::{self, Policy, PolicyName, RouteRequest};
use wes_proxy::ranking::Ranking;
use wes_proxy::state::AppState;

/// The model every node holds, so every node is a candidate: the worst case for one decision.
const MODEL: &str = "llama3.2:3b";
const OTHER_MODELS: [&str; 8] = [
    "qwen2.5:7b",
    "mistral:7b",
    "phi3:mini",
    "gemma2:9b",
    "nomic-embed-text",
    "smollm2:135m",
    "llama3.1:8b",
    "deepseek-r1:7b",
];
/// Nodes one request may try: the relay's first choice and two replays.
const WANT: usize = 3;
const MAX_CONCURRENCY: u32 = 8;

#[derive(Args, Debug)]
pub struct RoutingArgs {
    /// Fleet sizes to measure; the targets are stated for 1,000.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    nodes: Vec<usize>,
    /// Timed calls per measurement of one routing decision.
    #[arg(long, default_value_t = 100_000)]
    iterations: usize,
    /// Timed ranking rebuilds per fleet size.
    #[arg(long, default_value_t = 2_000)]
    rebuilds: usize,
    /// Instead of the report, run this policy's whole decision at the largest size in a loop
    /// for `--seconds` (for a profiler).
    #[arg(long)]
    loop_policy: Option<String>,
    /// With `--loop-policy`: profile the ranking rebuild instead.
    #[arg(long)]
    loop_rebuild: bool,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

struct Bench {
    state: Arc<AppState>,
    /// Slots held to fill nodes up in the busy scenario.
    _held: Vec<InFlightGuard>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A proxy state with `n` nodes and live telemetry: most measured, one in ten unmeasured (no
/// probe), one in twenty Fair, one in fifty Critical (excluded), each holding the benchmark model
/// and four others. With `busy`, the better-scored half of the measured nodes has every slot
/// taken, so policies must pass over them.
fn fleet(n: usize, busy: bool) -> anyhow::Result<Bench> {
    let mut text = String::from(
        "[listen]\napi = \"127.0.0.1:1\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[routing]\nstale_after = \"1h\"\n",
    );
    for i in 0..n {
        let _ = write!(
            text,
            "\n[[nodes]]\nid = \"node-{i:05}\"\nurl = \"http://10.{}.{}.{}:11434\"\ntoken = \"token-{i:05}\"\npue = {}\nmax_concurrency = {MAX_CONCURRENCY}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            1.0 + (i % 5) as f64 / 10.0
        );
    }
    let config = Config::parse(&text).map_err(|e| anyhow::anyhow!("generated config: {e}"))?;
    let limits = config.telemetry.clone();
    let ids: Vec<String> = config.nodes.iter().map(|n| n.id.clone()).collect();
    let state = AppState::new(config, None);
    let now_ms = unix_ms();
    for (i, id) in ids.iter().enumerate() {
        let thermal = match i {
            _ if i % 50 == 7 => ThermalState::Critical,
            _ if i % 20 == 0 => ThermalState::Fair,
            _ => ThermalState::Normal,
        };
        let mut models = vec![MODEL.to_owned()];
        models.extend((0..4).map(|k| OTHER_MODELS[(i + k * 3) % OTHER_MODELS.len()].to_owned()));
        let probes = if i % 10 == 3 {
            vec![]
        } else {
            vec![ProbeResult {
                model: MODEL.into(),
                tokens: 32,
                seconds: 0.5,
                tok_s: 20.0 + ((i * 13) % 180) as f64,
                finished_unix_ms: now_ms,
                ..ProbeResult::default()
            }]
        };
        let sample = Sample {
            node_id: id.clone(),
            timestamp_unix_ms: now_ms,
            seq: 1,
            sensor: SensorKind::Command as i32,
            power_watts: Some(50.0 + ((i * 37) % 400) as f64),
            thermal_state: thermal as i32,
            temperature_c: Some(60.0),
            models: Some(ModelList {
                models: models
                    .iter()
                    .map(|m| Model {
                        name: m.clone(),
                        ..Model::default()
                    })
                    .collect(),
            }),
            probes,
            reporter_version: "bench".into(),
            ..Sample::default()
        };
        // The ingest path itself turns samples into fleet state, so the state is what a live
        // proxy would hold.
        let (telemetry, probes) =
            wes_proxy::ingest::validate(&sample, id, now_ms, Instant::now(), &limits)
                .map_err(|e| anyhow::anyhow!("sample refused: {e:?}"))?;
        state.fleet.record(id, telemetry, probes);
    }
    state.rebuild_ranking();
    let mut held = Vec::new();
    if busy {
        let ranking = state.ranking.load_full();
        let route = ranking
            .routes
            .route(MODEL)
            .context("benchmark model missing from the table")?;
        let cooldown = state.config.load().health.cooldown;
        for node in &route.nodes[..route.measured / 2] {
            for _ in 0..node.max_concurrency {
                held.extend(
                    node.state
                        .try_acquire(node.max_concurrency, Instant::now(), cooldown),
                );
            }
        }
    }
    Ok(Bench { state, _held: held })
}

impl Bench {
    fn request(&self) -> RouteRequest<'static> {
        let config = self.state.config.load();
        RouteRequest::new(MODEL, &config.routing, Instant::now())
    }

    /// What the relay does to pick the nodes for one request, minus the relaying: load the
    /// published table, find the model's route, let the policy choose.
    fn decide(&self, policy: &dyn Policy) -> anyhow::Result<Vec<usize>> {
        let config = self.state.config.load();
        let routing = &config.routing;
        let ranking = self.state.ranking.load_full();
        let route = ranking
            .routes
            .route(MODEL)
            .context("model missing from the table")?;
        let request = RouteRequest::new(MODEL, routing, Instant::now());
        let chosen = policy::choose(
            policy,
            &request,
            route,
            routing.exploration_share,
            WANT,
            &mut rand::rng(),
        );
        if chosen.is_empty() {
            anyhow::bail!("{} chose no node", policy.name());
        }
        Ok(chosen)
    }
}

/// Sorted per-call timings, nanoseconds.
struct Timings(Vec<u64>);

impl Timings {
    fn collect(
        iterations: usize,
        mut f: impl FnMut() -> anyhow::Result<Duration>,
    ) -> anyhow::Result<Timings> {
        // Warms caches and the allocator, and lets `top` settle on its choice.
        for _ in 0..(iterations / 10).max(10) {
            f()?;
        }
        let mut v = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            v.push(u64::try_from(f()?.as_nanos()).unwrap_or(u64::MAX));
        }
        v.sort_unstable();
        Ok(Timings(v))
    }

    fn q(&self, quantile: f64) -> u64 {
        let i = ((self.0.len() as f64 - 1.0) * quantile).round() as usize;
        self.0.get(i).copied().unwrap_or_default()
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64
    }
}

fn us(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{:.2}", ns / 1e3)
    } else {
        format!("{:.1}", ns / 1e3)
    }
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = f()?;
    // Dropping the result is part of the work the relay pays for per request.
    drop(black_box(out));
    Ok(t0.elapsed())
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn stats(t: &Timings) -> [String; 4] {
    [
        us(t.q(0.5) as f64),
        us(t.q(0.9) as f64),
        us(t.q(0.99) as f64),
        us(t.mean()),
    ]
}

pub fn run(args: RoutingArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.loop_policy {
        let n = args.nodes.iter().copied().max().context("no fleet size")?;
        let bench = fleet(n, false)?;
        let policy = PolicyName::parse(name)
            .with_context(|| format!("no policy {name}"))?
            .build();
        let end = Instant::now() + Duration::from_secs_f64(args.seconds);
        let mut calls = 0u64;
        while Instant::now() < end {
            if args.loop_rebuild {
                bench.state.rebuild_ranking();
            } else {
                black_box(bench.decide(policy.as_ref())?);
            }
            calls += 1;
        }
        eprintln!("{calls} calls at {n} nodes in {} s", args.seconds);
        return Ok(());
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### One routing decision: load the published table, look up the model, `policy::choose` {WANT} nodes\n"
    );
    let _ = writeln!(
        out,
        "Every node holds the model; per call, µs, over {} timed calls after a warm-up (dropping the result included). \
\"idle\": every node has free slots; \"busy\": the better-scored half of the measured nodes is full.\n",
        args.iterations
    );
    let _ = writeln!(
        out,
        "| nodes | fleet | policy | routable nodes | median | p90 | p99 | mean | of which `choose` alone (median) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let mut at_1000 = Vec::new();
    for &n in &args.nodes {
        for busy in [false, true] {
            let bench = fleet(n, busy)?;
            let ranking = bench.state.ranking.load_full();
            let route = ranking
                .routes
                .route(MODEL)
                .context("model missing from the table")?;
            let share = bench.state.config.load().routing.exploration_share;
            for name in PolicyName::ALL {
                let scenario = if busy { "busy" } else { "idle" };
                let policy = name.build();
                let policy = policy.as_ref();
                let whole = Timings::collect(args.iterations, || timed(|| bench.decide(policy)))?;
                let choose_only = Timings::collect(args.iterations, || {
                    let request = bench.request();
                    timed(|| {
                        Ok(policy::choose(
                            policy,
                            &request,
                            route,
                            share,
                            WANT,
                            &mut rand::rng(),
                        ))
                    })
                })?;
                let [median, p90, p99, mean] = stats(&whole);
                row(
                    &mut out,
                    &[
                        n.to_string(),
                        scenario.into(),
                        name.to_string(),
                        route.nodes.len().to_string(),
                        median,
                        p90,
                        p99,
                        mean,
                        us(choose_only.q(0.5) as f64),
                    ],
                );
                if n == 1000 {
                    at_1000.push((format!("{name}, {scenario}"), whole.q(0.5), whole.q(0.99)));
                }
            }
        }
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "### Ranking rebuild\n");
    let _ = writeln!(
        out,
        "After each burst of samples (at most every {} ms) and every {} ms the proxy rebuilds the ranking, board and routing table in one pass (`Ranking::build`), and publishes it (`AppState::rebuild_ranking`). Per call, µs, over {} timed rebuilds after a warm-up.\n",
        wes_proxy::server::REBUILD_SPACING.as_millis(),
        wes_proxy::server::REBUILD_EVERY.as_millis(),
        args.rebuilds
    );
    let _ = writeln!(out, "| nodes | call | median | p90 | p99 | mean |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut rebuild_1000 = None;
    for &n in &args.nodes {
        let bench = fleet(n, false)?;
        let state = &bench.state;
        let config = state.config.load_full();
        let (routing, health) = (&config.routing, &config.health);
        let ranking = Timings::collect(args.rebuilds, || {
            timed(|| {
                Ok(Ranking::build(
                    &state.fleet.view(),
                    routing,
                    health,
                    Instant::now(),
                ))
            })
        })?;
        let both = Timings::collect(args.rebuilds, || {
            timed(|| {
                state.rebuild_ranking();
                Ok(())
            })
        })?;
        for (call, t) in [
            ("`Ranking::build`", &ranking),
            ("`AppState::rebuild_ranking` (built and published)", &both),
        ] {
            let [median, p90, p99, mean] = stats(t);
            row(
                &mut out,
                &[n.to_string(), call.into(), median, p90, p99, mean],
            );
        }
        if n == 1000 {
            rebuild_1000 = Some((both.q(0.5), both.q(0.99)));
        }
    }
    let _ = writeln!(out);

    if !at_1000.is_empty() {
        let _ = writeln!(
            out,
            "### Target: one routing decision at 1,000 nodes ≤ 2 µs\n"
        );
        let _ = writeln!(
            out,
            "| policy, fleet | median µs | p99 µs | verdict (median) |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for (name, median, p99) in at_1000 {
            let verdict = if median <= 2_000 {
                "met".to_owned()
            } else {
                format!("**missed**: {:.1}× the target", median as f64 / 2_000.0)
            };
            row(
                &mut out,
                &[name, us(median as f64), us(p99 as f64), verdict],
            );
        }
        let _ = writeln!(out);
    }
    if let Some((median, p99)) = rebuild_1000 {
        // The ranking service pauses this long after each rebuild (`REBUILD_SPACING` in
        // proxy/src/server.rs), so samples arriving continuously keep it rebuilding at
        // 1 / (spacing + rebuild time).
        let spacing_ns = wes_proxy::server::REBUILD_SPACING.as_nanos() as f64;
        let per_second = 1e9 / (spacing_ns + median as f64);
        let _ = writeln!(
            out,
            "Rebuild at 1,000 nodes: median {} µs, p99 {} µs. With samples arriving continuously the proxy rebuilds after each {} ms pause, about {per_second:.0} times a second: {:.1}% of one core.\n",
            us(median as f64),
            us(p99 as f64),
            wes_proxy::server::REBUILD_SPACING.as_millis(),
            per_second * median as f64 / 1e9 * 100.0
        );
    }
    print!("{out}");
    Ok(())
}
