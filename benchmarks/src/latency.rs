//! Proxy overhead, side by side: the same node reached directly and through each proxy, in
//! interleaved rounds so that background load on a shared machine falls on all targets alike.
//! Prints a markdown report on stdout; progress goes to stderr.

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
    /// Per target, before measuring.
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
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    saturation: Duration,
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

struct Target {
    name: String,
    base: String,
    family: Option<Family>,
    run_cpu0: f64,
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
    })
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|s| parse_target(s))
        .collect::<anyhow::Result<_>>()?;
    let node = args.node_pid.map(Family::of).transpose()?;
    let client = load::client();
    let prepared = |t: &Target, call| Prepared::new(&t.base, &args.model, call);

    for t in &targets {
        eprintln!("warm-up: {}", t.name);
        for call in [Call::Generate, Call::ChatFirstByte] {
            let o =
                load::open_loop(&client, &prepared(t, call)?, args.rate, args.warmup / 2).await?;
            if o.ok == 0 {
                bail!(
                    "{}: every warm-up call failed: {}",
                    t.name,
                    o.first_error.unwrap_or_default()
                );
            }
        }
    }

    let mut phases: Vec<[Phase; 2]> = targets.iter().map(|_| Default::default()).collect();
    for (slot, call) in [Call::Generate, Call::ChatFirstByte]
        .into_iter()
        .enumerate()
    {
        for round in 0..args.rounds {
            // Rotating the order keeps any drift in background load from favouring one target.
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
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

    let mut saturation = Vec::new();
    for t in &targets {
        eprintln!("saturation: {}", t.name);
        let proxy_w = t.family.as_ref().map(CpuWindow::start);
        let node_w = node.as_ref().map(CpuWindow::start);
        let o = load::closed_loop(
            &client,
            &prepared(t, Call::Generate)?,
            args.concurrency,
            args.saturation,
        )
        .await;
        let proxy_cpu = proxy_w.zip(t.family.as_ref()).map(|(w, f)| w.finish(f).0);
        let node_cpu = node_w.zip(node.as_ref()).map(|(w, f)| w.finish(f).0);
        saturation.push((o, proxy_cpu, node_cpu));
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

fn report(
    args: &LatencyArgs,
    targets: &[Target],
    phases: &[[Phase; 2]],
    saturation: &[(Outcome, Option<f64>, Option<f64>)],
    holds: &[(String, HoldOutcome)],
) -> String {
    let mut s = String::new();
    let titles = [
        format!(
            "`POST /api/generate` (`\"stream\": false`), open loop at {} req/s: latency",
            args.rate
        ),
        format!(
            "`POST /api/chat` (streaming), open loop at {} req/s: time to the first byte of the first token line",
            args.rate
        ),
    ];
    let Some(base) = phases.first() else { return s };
    let mut added_by_target: Vec<[Option<Added>; 2]> = Vec::new();
    for (slot, title) in titles.iter().enumerate() {
        let _ = writeln!(s, "### {title}\n");
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
            let (Some(o), Some(b)) = (phase.outcome.as_ref(), base[slot].latency()) else {
                continue;
            };
            let h = &o.latency;
            let a = added(h, b);
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
            if added_by_target.len() <= i {
                added_by_target.push([None, None]);
            }
            added_by_target[i][slot] = Some(a);
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
        let _ = writeln!(s);
    }

    let _ = writeln!(
        s,
        "### Throughput at saturation: closed loop, {} callers, `/api/generate`, {} s per target\n",
        args.concurrency,
        args.saturation.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| target | requests/s | errors | p50 ms | p99 ms | proxy CPU, share of one core | node CPU, share of one core |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (t, (o, proxy_cpu, node_cpu)) in targets.iter().zip(saturation) {
        let wall = o.wall.as_secs_f64().max(1e-9);
        let share =
            |c: &Option<f64>| c.map_or("–".to_owned(), |c| format!("{:.0}%", 100.0 * c / wall));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            t.name,
            o.ok as f64 / wall,
            o.errors,
            ms(q(&o.latency, 0.5)),
            ms(q(&o.latency, 0.99)),
            share(proxy_cpu),
            share(node_cpu),
        );
    }
    let _ = writeln!(s);

    if !holds.is_empty() {
        let _ = writeln!(
            s,
            "### {} concurrent streams held open through each proxy\n\nStreaming `/api/chat`, opened at {} per second, each {} token lines {} ms apart (about {} s).\n",
            args.streams,
            args.open_rate,
            args.stream_tokens,
            args.token_interval.as_millis(),
            (args.token_interval * u32::try_from(args.stream_tokens).unwrap_or(u32::MAX)).as_secs()
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
    if let (Some(w), Some(n)) = (find("wes-proxy"), find("nginx")) {
        let ratio = |a: i128, b: i128| {
            if b > 0 {
                format!("{:.2}×", a as f64 / b as f64)
            } else {
                "n/a (baseline added ≤ 0)".into()
            }
        };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let ratio_ok = |a: i128, b: i128| a <= 0 || (b > 0 && (a as f64) <= 1.5 * b as f64);
        let _ = writeln!(s, "### Targets at {} req/s\n", args.rate);
        let _ = writeln!(
            s,
            "The targets are stated for added latency; they are checked on both the generate latency and the chat time to first byte.\n"
        );
        let _ = writeln!(s, "| target | endpoint | measured | verdict |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (slot, endpoint) in ["`/api/generate`", "`/api/chat` first byte"]
            .iter()
            .enumerate()
        {
            let (Some(Some(wa)), Some(Some(na))) = (
                added_by_target.get(w).map(|a| a[slot].as_ref()),
                added_by_target.get(n).map(|a| a[slot].as_ref()),
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
            if let Some(Some(pa)) = find("pingora")
                .and_then(|p| added_by_target.get(p))
                .map(|a| a[slot].as_ref())
            {
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
