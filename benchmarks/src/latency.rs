//! Proxy overhead, side by side: the same node reached directly and through each proxy, in
//! interleaved rounds so that background load on a shared machine falls on all targets alike.
//! A proxy with no route for an endpoint (a router that speaks only OpenAI's API) is left out of
//! that endpoint rather than failing the run. Prints a markdown report on stdout, ending with
//! wes-proxy against each other proxy; progress goes to stderr.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;

use crate::load::{self, Call, HoldOutcome, HoldPlan, Outcome, Prepared};
use crate::procstat::{CpuWindow, Family};

#[derive(Args, Debug)]
pub struct LatencyArgs {
    /// `NAME=http://HOST:PORT[@PID]`; the first is the baseline (the node itself). A PID (a
    /// proxy's, children included) makes the target's CPU and memory measured and its streams
    /// held open.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The model the node holds.
    #[arg(long)]
    model: String,
    /// The node's pid, for its CPU use.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Requests per second of the open-loop runs.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Per target, before measuring, shared among the endpoints.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// One target's share of a round.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    segment: Duration,
    /// Rounds over all targets (each measured for `rounds × segment` per endpoint).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Callers in the saturation run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Per target and endpoint.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    saturation: Duration,
    /// Slices the saturation time is cut into, the targets taking turns slice by slice: a
    /// drift in the machine's background load then reaches every target alike, and a ratio
    /// is the median of same-slice ratios.
    #[arg(long, default_value_t = 4)]
    saturation_rounds: u32,
    /// Streams held open at once through each proxy; 0 skips the test.
    #[arg(long, default_value_t = 5000)]
    streams: u64,
    /// New streams per second while opening them.
    #[arg(long, default_value_t = 1000.0)]
    open_rate: f64,
    /// Token lines per held stream.
    #[arg(long, default_value_t = 20)]
    stream_tokens: u64,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    token_interval: Duration,
}

/// The endpoints measured open loop, in report order.
const LATENCY_CALLS: [Call; 4] = [
    Call::Generate,
    Call::ChatFirstByte,
    Call::OpenAiChat,
    Call::OpenAiChatFirstByte,
];

/// The endpoints measured at saturation (a subset of `LATENCY_CALLS`).
const SATURATION_CALLS: [Call; 3] = [Call::Generate, Call::OpenAiChat, Call::OpenAiChatFirstByte];

fn slot(call: Call) -> usize {
    LATENCY_CALLS
        .iter()
        .position(|c| *c == call)
        .unwrap_or_else(|| panic!("{call:?} is not in LATENCY_CALLS"))
}

fn title(call: Call, rate: f64) -> String {
    match call {
        Call::Generate => format!(
            "`POST /api/generate` (`\"stream\": false`), open loop at {rate} req/s: latency"
        ),
        Call::ChatFirstByte => format!(
            "`POST /api/chat` (streaming), open loop at {rate} req/s: time to the first byte of the first token line"
        ),
        Call::OpenAiChat => format!(
            "`POST /v1/chat/completions` (`\"stream\": false`), open loop at {rate} req/s: latency"
        ),
        Call::OpenAiChatFirstByte => format!(
            "`POST /v1/chat/completions` (`\"stream\": true`, SSE), open loop at {rate} req/s: time to the first byte of the first event"
        ),
    }
}

/// A column heading for the comparison tables.
fn short(call: Call) -> &'static str {
    match call {
        Call::Generate => "`/api/generate`",
        Call::ChatFirstByte => "`/api/chat` first byte",
        Call::OpenAiChat => "`/v1/chat/completions`",
        Call::OpenAiChatFirstByte => "`/v1/chat/completions` stream first byte",
    }
}

fn saturation_short(call: Call) -> &'static str {
    match call {
        Call::OpenAiChatFirstByte => "`/v1/chat/completions` streamed (whole streams)",
        other => short(other),
    }
}

struct Target {
    name: String,
    base: String,
    family: Option<Family>,
    run_cpu0: f64,
    /// Per `LATENCY_CALLS` slot: why the target does not relay that endpoint, if it does not.
    not_relayed: Vec<Option<String>>,
}

impl Target {
    fn relays(&self, call: Call) -> bool {
        self.not_relayed[slot(call)].is_none()
    }
}

#[derive(Default)]
struct Phase {
    outcome: Option<Outcome>,
    round_p50_ns: Vec<u64>,
    round_p99_ns: Vec<u64>,
    proxy_cpu_s: f64,
    node_cpu_s: f64,
    wall_s: f64,
}

impl Phase {
    fn add(&mut self, o: Outcome, proxy_cpu_s: f64, node_cpu_s: f64, wall_s: f64) {
        self.round_p50_ns.push(o.latency.value_at_quantile(0.5));
        self.round_p99_ns.push(o.latency.value_at_quantile(0.99));
        self.proxy_cpu_s += proxy_cpu_s;
        self.node_cpu_s += node_cpu_s;
        self.wall_s += wall_s;
        match &mut self.outcome {
            Some(all) => all.merge(&o),
            None => self.outcome = Some(o),
        }
    }

    fn latency(&self) -> Option<&Histogram<u64>> {
        self.outcome.as_ref().map(|o| &o.latency)
    }
}

/// One target's closed loop on one endpoint, over all its slices.
struct Saturation {
    outcome: Outcome,
    /// Requests per second in each slice, in slice order.
    slices: Vec<f64>,
    proxy_cpu_s: Option<f64>,
    node_cpu_s: Option<f64>,
}

impl Saturation {
    fn new() -> Saturation {
        Saturation {
            outcome: Outcome::new(),
            slices: Vec::new(),
            proxy_cpu_s: None,
            node_cpu_s: None,
        }
    }

    fn add_slice(&mut self, outcome: &Outcome, proxy_cpu_s: Option<f64>, node_cpu_s: Option<f64>) {
        self.slices
            .push(outcome.ok as f64 / outcome.wall.as_secs_f64().max(1e-9));
        self.outcome.merge(outcome);
        let sum = |acc: Option<f64>, x: Option<f64>| x.map(|x| acc.unwrap_or(0.0) + x).or(acc);
        self.proxy_cpu_s = sum(self.proxy_cpu_s, proxy_cpu_s);
        self.node_cpu_s = sum(self.node_cpu_s, node_cpu_s);
    }

    /// The median slice's requests per second.
    fn per_second(&self) -> f64 {
        median(self.slices.clone())
    }

    /// The median over slices of this target's rate divided by `other`'s in the same slice.
    fn ratio_to(&self, other: &Saturation) -> Option<f64> {
        let ratios: Vec<f64> = self
            .slices
            .iter()
            .zip(&other.slices)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        (!ratios.is_empty()).then(|| median(ratios))
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

fn parse_target(spec: &str) -> anyhow::Result<Target> {
    let (name, rest) = spec.split_once('=').context("a target is NAME=URL[@PID]")?;
    let (base, pid) = match rest.rsplit_once('@') {
        Some((b, p)) => (b, Some(p.parse::<u32>().context("PID")?)),
        None => (rest, None),
    };
    let family = pid.map(Family::of).transpose()?;
    let run_cpu0 = family.as_ref().map_or(0.0, Family::cpu_seconds);
    Ok(Target {
        name: name.to_owned(),
        base: base.trim_end_matches('/').to_owned(),
        family,
        run_cpu0,
        not_relayed: vec![None; LATENCY_CALLS.len()],
    })
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let mut targets: Vec<Target> = args
        .targets
        .iter()
        .map(|s| parse_target(s))
        .collect::<anyhow::Result<_>>()?;
    let node = args.node_pid.map(Family::of).transpose()?;
    let client = load::client();
    let prepared = |t: &Target, call| Prepared::new(&t.base, &args.model, call);

    let warmup_each = args.warmup / u32::try_from(LATENCY_CALLS.len())?;
    for (i, t) in targets.iter_mut().enumerate() {
        eprintln!("warm-up: {}", t.name);
        for (slot, call) in LATENCY_CALLS.into_iter().enumerate() {
            let o = load::open_loop(&client, &prepared(t, call)?, args.rate, warmup_each).await?;
            if o.ok > 0 {
                continue;
            }
            let error = o.first_error.unwrap_or_default();
            // A router that has no route for an endpoint answers 404 or 405 to every call: it is
            // left out of that endpoint and said so in the report. The baseline must answer all.
            if i > 0 && o.errors > 0 && o.no_route == o.errors {
                eprintln!("  {} does not relay {}: {error}", t.name, call.path());
                t.not_relayed[slot] = Some(error);
                continue;
            }
            bail!(
                "{}: every warm-up call to {} failed: {error}",
                t.name,
                call.path()
            );
        }
    }
    let targets = targets;

    let mut phases: Vec<Vec<Phase>> = targets
        .iter()
        .map(|_| LATENCY_CALLS.iter().map(|_| Phase::default()).collect())
        .collect();
    for (slot, call) in LATENCY_CALLS.into_iter().enumerate() {
        let serving: Vec<usize> = (0..targets.len())
            .filter(|i| targets[*i].relays(call))
            .collect();
        for round in 0..args.rounds {
            // Rotating the order keeps any drift in background load from favouring one target.
            for k in 0..serving.len() {
                let i = serving[(k + round) % serving.len()];
                let t = &targets[i];
                eprintln!("{call:?} round {}/{}: {}", round + 1, args.rounds, t.name);
                let proxy_w = t.family.as_ref().map(CpuWindow::start);
                let node_w = node.as_ref().map(CpuWindow::start);
                let o =
                    load::open_loop(&client, &prepared(t, call)?, args.rate, args.segment).await?;
                let proxy_cpu = proxy_w
                    .zip(t.family.as_ref())
                    .map_or(0.0, |(w, f)| w.finish(f).0);
                let node_cpu = node_w
                    .zip(node.as_ref())
                    .map_or(0.0, |(w, f)| w.finish(f).0);
                let wall = o.wall.as_secs_f64();
                phases[i][slot].add(o, proxy_cpu, node_cpu, wall);
            }
        }
    }

    // Per `SATURATION_CALLS` slot, per target. One endpoint's targets take turns slice by
    // slice, so drift in background load reaches them alike.
    let rounds = args.saturation_rounds.max(1);
    let slice = args.saturation / rounds;
    let mut saturation: Vec<Vec<Option<Saturation>>> = Vec::new();
    for call in SATURATION_CALLS {
        let mut row: Vec<Option<Saturation>> = targets
            .iter()
            .map(|t| t.relays(call).then(Saturation::new))
            .collect();
        for round in 1..=rounds {
            for (t, sat) in targets.iter().zip(row.iter_mut()) {
                let Some(sat) = sat else { continue };
                eprintln!("saturation {call:?}, slice {round} of {rounds}: {}", t.name);
                let proxy_w = t.family.as_ref().map(CpuWindow::start);
                let node_w = node.as_ref().map(CpuWindow::start);
                let outcome =
                    load::closed_loop(&client, &prepared(t, call)?, args.concurrency, slice).await;
                sat.add_slice(
                    &outcome,
                    proxy_w.zip(t.family.as_ref()).map(|(w, f)| w.finish(f).0),
                    node_w.zip(node.as_ref()).map(|(w, f)| w.finish(f).0),
                );
            }
        }
        saturation.push(row);
    }

    let mut holds = Vec::new();
    if args.streams > 0 {
        let plan = HoldPlan {
            streams: args.streams,
            open_rate: args.open_rate,
            tokens: args.stream_tokens,
            interval: args.token_interval,
        };
        for t in &targets {
            let Some(family) = &t.family else { continue };
            // The slow streams are the node's own `/api/chat` option.
            if !t.relays(Call::ChatFirstByte) {
                continue;
            }
            eprintln!("{} streams held open: {}", args.streams, t.name);
            // A fresh pool: the streams' connections must not be reused by anything else.
            let stream_client = load::client();
            let o = load::hold_streams(&stream_client, &t.base, &args.model, &plan, family).await?;
            eprintln!("  {o:?}");
            holds.push((t.name.clone(), o));
            drop(stream_client);
            // Lets the closed connections drain before the next target's burst.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    print!("{}", report(&args, &targets, &phases, &saturation, &holds));
    Ok(())
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn signed_ms(ns: i128) -> String {
    format!("{:+.3}", ns as f64 / 1e6)
}

fn q(h: &Histogram<u64>, quantile: f64) -> u64 {
    h.value_at_quantile(quantile)
}

struct Added {
    p50: i128,
    p99: i128,
}

fn added(h: &Histogram<u64>, base: &Histogram<u64>) -> Added {
    Added {
        p50: i128::from(q(h, 0.5)) - i128::from(q(base, 0.5)),
        p99: i128::from(q(h, 0.99)) - i128::from(q(base, 0.99)),
    }
}

/// `a ÷ b` of two added latencies; meaningless when the divisor is within noise of zero or below.
fn ratio(a: i128, b: i128) -> String {
    if b > 0 {
        times(a as f64 / b as f64)
    } else {
        "n/a (divisor added ≤ 0)".into()
    }
}

/// Two decimals, or three for a small ratio, which would read as 0.00×.
fn times(r: f64) -> String {
    if r.abs() < 0.1 {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

fn report(
    args: &LatencyArgs,
    targets: &[Target],
    phases: &[Vec<Phase>],
    saturation: &[Vec<Option<Saturation>>],
    holds: &[(String, HoldOutcome)],
) -> String {
    let mut s = String::new();
    let Some(base) = phases.first() else { return s };
    // Per target, per `LATENCY_CALLS` slot.
    let added_by_target: Vec<Vec<Option<Added>>> = phases
        .iter()
        .map(|row| {
            row.iter()
                .zip(base)
                .map(|(p, b)| Some(added(p.latency()?, b.latency()?)))
                .collect()
        })
        .collect();

    for (slot, call) in LATENCY_CALLS.into_iter().enumerate() {
        let _ = writeln!(s, "### {}\n", title(call, args.rate));
        let _ = writeln!(
            s,
            "Each target {} × {} s, interleaved with the others; latency from the scheduled send time.\n",
            args.rounds,
            args.segment.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "| target | requests | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p50 per round, ms | p99 per round, ms | added p50 ms | added p99 ms | proxy CPU, share of one core | proxy CPU µs per request | generator lateness p50 / p99 ms |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (i, t) in targets.iter().enumerate() {
            let phase = &phases[i][slot];
            let (Some(o), Some(a)) = (phase.outcome.as_ref(), added_by_target[i][slot].as_ref())
            else {
                continue;
            };
            let h = &o.latency;
            let per_round = |v: &[u64]| v.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(" / ");
            let (cpu_share, cpu_per_req) = if t.family.is_some() && phase.wall_s > 0.0 {
                (
                    format!("{:.1}%", 100.0 * phase.proxy_cpu_s / phase.wall_s),
                    format!(
                        "{:.0}",
                        1e6 * phase.proxy_cpu_s / (o.ok + o.errors).max(1) as f64
                    ),
                )
            } else {
                ("–".into(), "–".into())
            };
            let (added50, added99) = if i == 0 {
                ("–".into(), "–".into())
            } else {
                (signed_ms(a.p50), signed_ms(a.p99))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                t.name,
                o.ok + o.errors,
                o.errors,
                ms(q(h, 0.5)),
                ms(q(h, 0.9)),
                ms(q(h, 0.99)),
                ms(q(h, 0.999)),
                ms(h.max()),
                per_round(&phase.round_p50_ns),
                per_round(&phase.round_p99_ns),
                added50,
                added99,
                cpu_share,
                cpu_per_req,
                ms(q(&o.lateness, 0.5)),
                ms(q(&o.lateness, 0.99)),
            );
        }
        for (i, t) in targets.iter().enumerate() {
            if let Some(e) = phases[i][slot]
                .outcome
                .as_ref()
                .and_then(|o| o.first_error.as_ref())
            {
                let _ = writeln!(s, "\nFirst error through {}: `{e}`", t.name);
            }
        }
        for t in targets {
            if let Some(e) = &t.not_relayed[slot] {
                let _ = writeln!(
                    s,
                    "\n{} does not relay `{}`: every warm-up call was answered `{e}`.",
                    t.name,
                    call.path()
                );
            }
        }
        let _ = writeln!(s);
    }

    for (row, call) in saturation.iter().zip(SATURATION_CALLS) {
        let _ = writeln!(
            s,
            "### Throughput at saturation: closed loop, {} callers, {}, {} s per target in {} slices taken in turns\n",
            args.concurrency,
            saturation_short(call),
            args.saturation.as_secs_f64(),
            args.saturation_rounds.max(1),
        );
        if call == Call::OpenAiChatFirstByte {
            let _ = writeln!(
                s,
                "A caller sends its next request when the whole stream (4 events and `[DONE]`) has arrived; the latency columns are times to the first byte.\n"
            );
        }
        let _ = writeln!(
            s,
            "| target | requests/s (median slice) | errors | p50 ms | p99 ms | proxy CPU, share of one core | node CPU, share of one core |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (t, sat) in targets.iter().zip(row) {
            let Some(sat) = sat else {
                let _ = writeln!(s, "| {} | not relayed | | | | | |", t.name);
                continue;
            };
            let o = &sat.outcome;
            let wall = o.wall.as_secs_f64().max(1e-9);
            let share = |c: &Option<f64>| {
                c.map_or("–".to_owned(), |c| format!("{:.0}%", 100.0 * c / wall))
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} | {} |",
                t.name,
                sat.per_second(),
                o.errors,
                ms(q(&o.latency, 0.5)),
                ms(q(&o.latency, 0.99)),
                share(&sat.proxy_cpu_s),
                share(&sat.node_cpu_s),
            );
        }
        for (t, sat) in targets.iter().zip(row) {
            if let Some(e) = sat.as_ref().and_then(|s| s.outcome.first_error.as_ref()) {
                let _ = writeln!(s, "\nFirst error through {}: `{e}`", t.name);
            }
        }
        let _ = writeln!(s);
    }

    if !holds.is_empty() {
        let _ = writeln!(
            s,
            "### {} concurrent streams held open through each proxy\n\nStreaming `/api/chat`, opened at {} per second, each {} token lines {} ms apart (about {:.0} s).\n",
            args.streams,
            args.open_rate,
            args.stream_tokens,
            args.token_interval.as_millis(),
            (args.token_interval * u32::try_from(args.stream_tokens).unwrap_or(u32::MAX))
                .as_secs_f64()
        );
        let _ = writeln!(
            s,
            "| proxy | streams | first line received | completed with the done line | errors | peak open at once | all open after | proxy RSS at peak | proxy open fds at peak |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for (name, o) in holds {
            let errors: Vec<String> = o.errors.iter().map(|(k, v)| format!("{v}× {k}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} MiB | {} |",
                name,
                o.requested,
                o.opened,
                o.completed,
                if errors.is_empty() {
                    "0".to_owned()
                } else {
                    errors.join("; ")
                },
                o.peak_open,
                o.all_open_after
                    .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
                o.peak_rss_kib as f64 / 1024.0,
                o.peak_fds,
            );
        }
        let skipped: Vec<&str> = targets
            .iter()
            .filter(|t| t.family.is_some() && !t.relays(Call::ChatFirstByte))
            .map(|t| t.name.as_str())
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(
                s,
                "\nNot held through {}: the slow streams are the node's `/api/chat`, which they do not relay.",
                skipped.join(", ")
            );
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "### Proxy process over the whole run\n");
    let _ = writeln!(
        s,
        "| proxy | processes | CPU seconds (user + system) | peak RSS (VmHWM) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for t in targets {
        let Some(f) = &t.family else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} MiB |",
            t.name,
            f.pids.len(),
            f.cpu_seconds() - t.run_cpu0,
            f.status_kib("VmHWM") as f64 / 1024.0
        );
    }
    let _ = writeln!(s);

    let find = |name: &str| targets.iter().position(|t| t.name == name);
    if let Some(w) = find("wes-proxy") {
        s.push_str(&against_peers(targets, w, &added_by_target, saturation));
    }
    if let (Some(w), Some(n)) = (find("wes-proxy"), find("nginx")) {
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let ratio_ok = |a: i128, b: i128| a <= 0 || (b > 0 && (a as f64) <= 1.5 * b as f64);
        let _ = writeln!(s, "### Targets at {} req/s\n", args.rate);
        let _ = writeln!(
            s,
            "The targets are stated for added latency; they are checked on every endpoint measured open loop.\n"
        );
        let _ = writeln!(s, "| target | endpoint | measured | verdict |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (slot, call) in LATENCY_CALLS.into_iter().enumerate() {
            let endpoint = short(call);
            let (Some(wa), Some(na)) = (
                added_by_target[w][slot].as_ref(),
                added_by_target[n][slot].as_ref(),
            ) else {
                continue;
            };
            let rows = [
                (
                    "wes-proxy p50 added ≤ 0.2 ms",
                    format!("{} ms", signed_ms(wa.p50)),
                    wa.p50 <= 200_000,
                ),
                (
                    "wes-proxy p99 added ≤ 1 ms",
                    format!("{} ms", signed_ms(wa.p99)),
                    wa.p99 <= 1_000_000,
                ),
                (
                    "wes-proxy p50 added within 1.5× nginx's",
                    format!(
                        "{} vs {} ms: {}",
                        signed_ms(wa.p50),
                        signed_ms(na.p50),
                        ratio(wa.p50, na.p50)
                    ),
                    ratio_ok(wa.p50, na.p50),
                ),
                (
                    "wes-proxy p99 added within 1.5× nginx's",
                    format!(
                        "{} vs {} ms: {}",
                        signed_ms(wa.p99),
                        signed_ms(na.p99),
                        ratio(wa.p99, na.p99)
                    ),
                    ratio_ok(wa.p99, na.p99),
                ),
            ];
            for (target, measured, ok) in rows {
                let _ = writeln!(
                    s,
                    "| {target} | {endpoint} | {measured} | {} |",
                    verdict(ok)
                );
            }
            // Pingora with no hooks of ours is the floor under wes-proxy: its rows split the
            // overhead into Pingora's own and ours.
            if let Some(pa) = find("pingora").and_then(|p| added_by_target[p][slot].as_ref()) {
                let rows = [
                    ("Pingora alone: p50 added vs nginx's", pa.p50, na.p50),
                    ("wes-proxy: p50 added vs Pingora alone's", wa.p50, pa.p50),
                ];
                for (what, a, b) in rows {
                    let _ = writeln!(
                        s,
                        "| {what} (reference) | {endpoint} | {} vs {} ms: {} | – |",
                        signed_ms(a),
                        signed_ms(b),
                        ratio(a, b)
                    );
                }
            }
        }
        let _ = writeln!(s);
    }
    s
}

/// wes-proxy (target `w`) against every other proxy of the run, one row each.
fn against_peers(
    targets: &[Target],
    w: usize,
    added_by_target: &[Vec<Option<Added>>],
    saturation: &[Vec<Option<Saturation>>],
) -> String {
    let mut s = String::new();
    let peers: Vec<usize> = (1..targets.len()).filter(|i| *i != w).collect();
    if peers.is_empty() {
        return s;
    }
    let _ = writeln!(s, "### wes-proxy against each peer\n");
    let _ = writeln!(
        s,
        "From the tables above (one run, same node, same client). Latency: wes-proxy's added p50 and the peer's, and wes-proxy's divided by the peer's: below 1× wes-proxy adds less. Throughput: wes-proxy's saturation requests/s and the peer's (median slices), and the median of wes-proxy's divided by the peer's in the same slice: above 1× wes-proxy carries more.\n"
    );
    let header = |cols: Vec<&str>| {
        format!(
            "| peer | {} |\n|---|{}\n",
            cols.join(" | "),
            "---|".repeat(cols.len())
        )
    };
    let _ = writeln!(s, "Added p50 latency at the open-loop rate:\n");
    s.push_str(&header(LATENCY_CALLS.into_iter().map(short).collect()));
    for &p in &peers {
        let cells: Vec<String> = (0..LATENCY_CALLS.len())
            .map(|slot| {
                match (
                    added_by_target[w][slot].as_ref(),
                    added_by_target[p][slot].as_ref(),
                ) {
                    (Some(wa), Some(pa)) => format!(
                        "{} vs {} ms: **{}**",
                        signed_ms(wa.p50),
                        signed_ms(pa.p50),
                        ratio(wa.p50, pa.p50)
                    ),
                    (_, None) if !targets[p].relays(LATENCY_CALLS[slot]) => {
                        "not relayed by the peer".into()
                    }
                    _ => "–".into(),
                }
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", targets[p].name, cells.join(" | "));
    }
    let _ = writeln!(s, "\nThroughput at saturation:\n");
    s.push_str(&header(
        SATURATION_CALLS.into_iter().map(saturation_short).collect(),
    ));
    for &p in &peers {
        let cells: Vec<String> = saturation
            .iter()
            .map(|row| match (row[w].as_ref(), row[p].as_ref()) {
                (Some(ws), Some(ps)) => {
                    let (a, b) = (ws.per_second(), ps.per_second());
                    let r = ws.ratio_to(ps).map_or("n/a".into(), times);
                    format!("{a:.0} vs {b:.0} req/s: **{r}**")
                }
                (_, None) => "not relayed by the peer".into(),
                (None, _) => "–".into(),
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", targets[p].name, cells.join(" | "));
    }
    let _ = writeln!(s);
    s
}
