"""The suite's reports: per scenario, docs/benchmarks/routing-quality/<scenario>/README.md with
its plots and numbers, from the raw data of each run; and docs/benchmarks/routing-quality.md,
the suite's summary.

Each report's "Findings" section is written by a person: the text between the findings markers
of an existing report is kept when the report is rebuilt.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from metrics import EXIT_SHARE, EXIT_WINDOW_S, SHARE_BIN_S, share_series, summarize  # noqa: E402
from oracle import NodeModel  # noqa: E402

REPORT = "README.md"
SUMMARY = "routing-quality.json"
SUITE = "routing-quality.md"
DEFAULT = "top"
TIMELINE_POLICIES = ("top", "top+average", "least_connections", "oracle")
STATE_COLOURS = {"Normal": None, "Fair": "#fde68a", "Serious": "#fdba74", "Critical": "#f87171",
                 "Unknown": "#d1d5db"}
PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#6b7280", "#ea580c", "#b45309"]
FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"
SLO_TTFT_MS = 2000.0  # routing.slo_ttft's default, the TTFT target


def _load1(uptime: str) -> float | None:
    m = re.search(r"load average: ([0-9.]+)", uptime)
    return float(m.group(1)) if m else None


def write(out: Path, scenario, policies: list[str], load_raw) -> None:
    summaries_load: dict[str, float | None] = {}
    runs, summaries, metas = {}, {}, []
    for p in policies:
        run, m = load_raw(p)
        runs[p] = run
        metas.append(m)
        summaries_load[p] = _load1(m["machine"]["load_before"])
        heat_node = m["heat"]["node"] if m["heat"] else None
        summaries[p] = summarize(run, heat_node, m["idle_watts"])
        summaries[p]["load_1min_before"] = summaries_load[p]
    if not runs:
        raise SystemExit("no runs to report")
    # The setup is the same for every run; the load is the first run's before, the last's after.
    meta = dict(metas[0])
    meta["machine"] = {**metas[0]["machine"], "load_after": metas[-1]["machine"]["load_after"]}
    out.mkdir(parents=True, exist_ok=True)
    plots = [_efficiency_plot(out, summaries)]
    plots += [_timeline_plot(out, runs[p], summaries[p], meta) for p in TIMELINE_POLICIES if p in runs]
    path = out / REPORT
    findings = _kept_findings(path)
    path.write_text(_markdown(scenario, summaries, runs, meta, plots, findings))
    # The numbers behind the tables, for comparing runs (the raw records stay out of git).
    (out / SUMMARY).write_text(json.dumps(
        {"scenario": scenario.name, "title": scenario.title,
         "beat_least_connections": scenario.beat_least_connections,
         "machine": meta["machine"], "workload": meta["workload"], "grace_s": meta["grace_s"],
         "time_scale": meta["time_scale"], "heat": meta["heat"],
         "routing_extra": meta.get("routing_extra"), "runs": summaries}, indent=1) + "\n")
    print(f"routing-quality: wrote {path} and {len(plots)} plots")


def _kept_findings(path: Path) -> str:
    if path.exists():
        m = re.search(re.escape(FINDINGS_START) + r"(.*?)" + re.escape(FINDINGS_END),
                      path.read_text(), re.S)
        if m:
            return m.group(1).strip("\n")
    return "(Not written yet: what the numbers above mean, and why.)"


def _fmt(v, spec=".0f", none="–"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _pct(v, spec=".0f"):
    return _fmt(None if v is None else v * 100, spec) + ("%" if v is not None else "")


def _workload_line(w: dict, meta: dict, count: int) -> str:
    if w.get("burst_every_s"):
        arrivals = (f"waves of {w['burst_size']} requests at once every {w['burst_every_s']:g} s "
                    f"for {w['duration_s']:.0f} s")
    else:
        arrivals = f"open-loop Poisson, {w['rate']} requests/s for {w['duration_s']:.0f} s"
    models = w.get("models") or [[meta["model"], 1.0]]
    mix = ", ".join(f"`{m}` {wt * 100:.0f}%" for m, wt in models) if len(models) > 1 \
        else f"model `{models[0][0]}`"
    return (f"| workload | {arrivals} ({count} requests), seed {w['seed']}; `/api/generate` "
            f"streaming, {mix}; prompt {w['prompt_tokens'][0]}–{w['prompt_tokens'][1]} tokens, "
            f"output (`num_predict`) {w['output_tokens'][0]}–{w['output_tokens'][1]} tokens, both "
            f"uniform |")


def _markdown(scenario, summaries: dict, runs: dict, meta: dict, plots: list[str],
              findings: str) -> str:
    w = meta["workload"]
    oracle = summaries.get("oracle")
    machine = meta["machine"]
    heat = meta["heat"]
    node_ids = [n["id"] for n in meta["nodes"]]
    lines = [
        f"# Routing quality, scenario `{scenario.name}`: {scenario.title}",
        "",
        scenario.about,
        "",
        "`benchmarks/routing-quality.sh` writes this file, its plots and `routing-quality.json` (the",
        f"numbers; each run's raw records go to `target/routing-quality/raw/{scenario.name}/`); the",
        "suite's summary is [../../routing-quality.md](../../routing-quality.md). Each policy runs",
        f"against a fresh simulated fleet: {len(node_ids)} `wes-sim-node`s, a real `wes-reporter` per",
        "node (its `command` sensor reads the node's `/wes-sim/state` every second, and it probes",
        "the node once at start), and the real `wes-proxy` (release build) with the policy in its",
        "TOML. The same seeded workload hits every run.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {machine['cpu']}, {machine['cores']} cores (shared with other work) |",
        f"| date | {machine['date']} |",
        f"| commit | {machine['commit']} |",
        f"| load (`uptime`) before | {machine['load_before']} |",
        f"| load (`uptime`) after | {machine['load_after']} |",
        _workload_line(w, meta, len(runs[next(iter(runs))].outcomes)),
        f"| measured window | {w['duration_s'] + meta['grace_s']:.0f} s from the first request "
        f"(arrivals, then {meta['grace_s']:.0f} s for the last answers); the same for every run |",
        f"| thermal clock | `--time-scale {meta['time_scale']:g}` (heat moves {meta['time_scale']:g}× "
        f"faster than wall time; tokens and energy are real time) |",
    ]
    if heat:
        lines.append(f"| thermal event | at t = {heat['at_fraction'] * w['duration_s']:.0f} s "
                     f"(1/3 of the arrivals), `POST /wes-sim/heat {_json(heat['body'])}` on "
                     f"`{heat['node']}` |")
    extra = meta.get("routing_extra") or ""
    lines.append("| proxy config | `[routing]` defaults (`exploration_share` 0.05, `hysteresis` 0.05, "
                 "`slo_ttft` 2s, `queue_timeout` 10s, `exclude_thermal = [\"Critical\"]`)"
                 + (f"; changed by `{extra}`" if extra else "") + "; `[[nodes]]` as below |")
    lines += [
        "",
        "The fleet. Figures are the profiles' own, for the node's first model, in the Normal",
        "state; \"at its limit\" is with `max_concurrency` streams:",
        "",
        "| node | profile | PUE | max_concurrency | memory | tok/s, 1 stream | W, idle → 1 stream | "
        "tok/J, 1 stream (× PUE) | tok/J at its limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in meta["nodes"]:
        m = _model(n, meta)
        if m is None:
            continue
        tok, watts = m.throughput(1, "Normal"), m.watts(1, "Normal")
        k = n["max_concurrency"]
        full = m.throughput(k, "Normal") / (m.watts(k, "Normal") * n["pue"])
        memory = f"{n['memory_gb']:g} GB" if n.get("memory_gb") else "–"
        lines.append(f"| `{n['id']}` | `{n['profile']}` | {n['pue']:g} | {k} | {memory} | "
                     f"{tok:.0f} | {m.idle:.0f} → {watts:.0f} | {tok / (watts * n['pue']):.2f} | "
                     f"{full:.2f} |")
    lines += [
        "",
        "## Results",
        "",
        "| policy | tok/J | vs oracle | tok/J × PUE | tok/J above idle | TTFT p50 | TTFT p95 | "
        "completed | failed | unfinished | cold loads | evictions | hot node's share, before → "
        "after | left after | sent to it while Critical | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for p, s in summaries.items():
        hn = s["heat_node"]
        node = s["nodes"].get(hn, {}) if hn else {}
        vs = (s["tok_per_j"] / oracle["tok_per_j"]) if oracle and p != "oracle" else None
        left = ("never" if s["exit_s"] is None else f"{s['exit_s']:.1f} s") if hn else "–"
        crit = sum(o.node == hn and o.node_state == "Critical" for o in runs[p].outcomes) if hn else None
        lines.append(
            f"| {'**' + p + '** (default)' if p == DEFAULT else p} | {_fmt(s['tok_per_j'], '.3f')} | "
            f"{_pct(vs, '.1f') if vs else '–'} | {_fmt(s['tok_per_j_facility'], '.3f')} | "
            f"{_fmt(s['tok_per_j_above_idle'], '.3f')} | {_fmt(s['ttft_p50_ms'])} ms | "
            f"{_fmt(s['ttft_p95_ms'])} ms | {s['completed']} | {s['failed']} | {s['unfinished']} | "
            f"{_fmt(s.get('loads'), 'd')} | {_fmt(s.get('evictions'), 'd')} | "
            f"{_pct(node.get('share_before'))} → {_pct(node.get('share_after'))} | {left} | "
            f"{_fmt(crit, 'd')} | {_fmt(s.get('load_1min_before'), '.2f')} |")
    lines += [
        "",
        "- **tok/J**: output tokens the clients received ÷ the sum over all nodes of the",
        "  `energy_joules` counter's increase across the window (idle nodes burn energy too).",
        "  **× PUE** weighs each node's energy by its site PUE (energy at the wall), which is what",
        "  WES and the oracle optimise. **above idle** subtracts each node's idle power × the",
        "  window: it shows the part routing can change. **top+average** is `top` with",
        "  `routing.score = \"average\"` (the default is `marginal`); **cold loads** and **evictions** are the simulators' own",
        "  counts over the window (the probes' loads before it are not counted).",
        "- **TTFT**: from sending the request to the first token-carrying chunk, as the client",
        "  sees it, over completed requests (nearest rank). **unfinished**: still streaming when",
        "  the window closed (their tokens so far count).",
        f"- **left after**: time from the heat event until the hot node's share of the requests",
        f"  sent in the next {EXIT_WINDOW_S:.0f} s first drops below {EXIT_SHARE * 100:.0f}%. "
        "**while Critical**: requests it was sent while",
        "  its ground-truth state (sampled every 200 ms) was Critical, which the config excludes.",
        "  **load before**: the machine's 1-minute load average as that run started (2 cores,",
        "  shared: timings, TTFT above all, carry that noise).",
    ]
    if oracle:
        lines += [
            "- **oracle**: the harness routes each request itself, straight to a node (no proxy on",
            "  the path), knowing the ground truth: each node's profile, its thermal state every",
            "  200 ms, exactly how many requests it holds and which models it has loaded. It picks",
            "  the node whose next request adds the most tokens per second per added watt (× PUE),",
            "  from the simulator's own equations, a cold model's load (and the reloads of what it",
            "  evicts) charged to the request; within the same `max_concurrency` and never a",
            "  Critical node; when all are",
            "  full it waits up to 10 s like the proxy's queue. Greedy and instantaneous, so it is a",
            "  ceiling for perfect information now, not a global optimum.",
        ]
    if DEFAULT in summaries and oracle:
        lines += ["", _target_line(scenario, summaries)]
    lines += ["", "Where the requests went (share of all requests sent, whole run):", "",
              "| policy | " + " | ".join(f"`{n}`" for n in node_ids) + " |",
              "|---|" + "---:|" * len(node_ids)]
    for p, s in summaries.items():
        lines.append(f"| {p} | " + " | ".join(
            _pct(s["nodes"][n]["requests"] / s["sent"] if s["sent"] else None) for n in node_ids) + " |")
    lines += ["", "## Plots", ""]
    for png in plots:
        lines.append(f"![{png}]({png})")
        lines.append("")
    lines += ["## Findings", "", FINDINGS_START, findings, FINDINGS_END, ""]
    return "\n".join(lines)


def targets(scenario, summaries: dict) -> dict:
    """Whether the default policy meets the suite's targets in this scenario."""
    s, oracle = summaries[DEFAULT], summaries["oracle"]
    out = {"vs_oracle": s["tok_per_j"] / oracle["tok_per_j"],
           "ttft_p95_ms": s["ttft_p95_ms"],
           "vs_least_connections": None, "need_vs_least_connections": scenario.beat_least_connections}
    lc = summaries.get("least_connections")
    if lc and lc["tok_per_j"]:
        out["vs_least_connections"] = s["tok_per_j"] / lc["tok_per_j"]
    met = out["vs_oracle"] >= 0.95 and (s["ttft_p95_ms"] or math.inf) <= SLO_TTFT_MS
    if scenario.beat_least_connections:
        met = met and (out["vs_least_connections"] or 0) >= scenario.beat_least_connections
    out["met"] = met
    return out


def _target_line(scenario, summaries: dict) -> str:
    t = targets(scenario, summaries)
    need = (f", and at least {scenario.beat_least_connections:g}× `least_connections`' tok/J"
            if scenario.beat_least_connections else "")
    have = (f", {t['vs_least_connections']:.2f}× `least_connections`"
            if t["vs_least_connections"] else "")
    return (f"**Target** (the default policy `{DEFAULT}` within 95% of the oracle's tokens per joule "
            f"with p95 TTFT within `slo_ttft` = 2 s{need}): **{'met' if t['met'] else 'missed'}**. "
            f"`{DEFAULT}` reaches {t['vs_oracle'] * 100:.1f}% of the oracle's tok/J{have}, with "
            f"p95 TTFT {_fmt(t['ttft_p95_ms'])} ms.")


def write_suite(out: Path, scenarios: list) -> None:
    """The suite's summary: one row per scenario, from each scenario's JSON."""
    rows, machines = [], []
    for sc in scenarios:
        data = json.loads((out / "routing-quality" / sc.name / SUMMARY).read_text())
        runs = data["runs"]
        machines.append(data["machine"])
        if DEFAULT not in runs or "oracle" not in runs:
            continue
        t = targets(sc, runs)
        avg = runs.get("top+average")
        rows.append(
            f"| [`{sc.name}`](routing-quality/{sc.name}/README.md) | {sc.title} | "
            f"{t['vs_oracle'] * 100:.1f}% | "
            f"{_pct(avg['tok_per_j'] / runs['oracle']['tok_per_j'], '.1f') if avg else '–'} | "
            f"{_fmt(t['vs_least_connections'], '.2f')}×"
            f"{' (≥ ' + format(sc.beat_least_connections, 'g') + '×)' if sc.beat_least_connections else ''} | "
            f"{_fmt(t['ttft_p95_ms'])} ms | {'met' if t['met'] else '**missed**'} | "
            f"{data['machine']['date']}, {data['machine']['commit']} |")
    path = out / SUITE
    findings = _kept_findings(path)
    m = machines[0] if machines else {"cpu": "?", "cores": "?"}
    lines = [
        "# Routing quality: the suite",
        "",
        "`benchmarks/routing-quality.sh` runs every scenario (`--scenario NAME` one of them,",
        "`--quick` a short subset into `target/`) and writes this summary and, per scenario, a",
        "report with its tables and plots. Each scenario is one thing a router must get right;",
        "each runs the same seeded workload against a fresh simulated fleet per policy and an",
        "oracle that routes on the simulator's ground truth (it learns nothing).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, shared with other work.",
        "",
        "Targets: the default policy (`top`, `routing.score = \"marginal\"`) at least 95% of the",
        "oracle's fleet tokens per joule in every scenario with p95 TTFT within `slo_ttft` (2 s),",
        "and at least 1.3× `least_connections`' in `high-load` and `multi-model`.",
        "",
        "| scenario | what it tests | `top` vs oracle | `top+average` vs oracle | `top` vs "
        "`least_connections` | `top` TTFT p95 | target | run |",
        "|---|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        "## Findings",
        "",
        FINDINGS_START, findings, FINDINGS_END, "",
    ]
    path.write_text("\n".join(lines))
    print(f"routing-quality: wrote {path}")


def _json(body: dict) -> str:
    return "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"


def _model(node: dict, meta: dict) -> NodeModel | None:
    profile = meta.get("profiles", {}).get(node["id"])
    if profile is None:
        return None
    from scenarios import NodeSpec
    spec = NodeSpec(node["id"], node["profile"], node["pue"], node["max_concurrency"],
                    tuple(node["models"]), node.get("memory_gb", 0.0))
    return NodeModel(spec, profile, node["models"][0])


def _efficiency_plot(out: Path, summaries: dict) -> str:
    names = list(summaries)
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(names) + 1.8))
    colours = ["#111827" if p == "oracle" else "#2563eb" if p == DEFAULT else "#93c5fd"
               for p in names]
    panels = [
        ("tok_per_j", "fleet tokens per joule\n(node energy counters)", ".3f"),
        ("tok_per_j_above_idle", "tokens per joule above idle\n(idle power × window subtracted)", ".2f"),
        ("ttft_p95_ms", "p95 time to first token (ms)", ".0f"),
    ]
    for ax, (key, title, spec) in zip(axes, panels):
        vals = [summaries[p][key] or 0 for p in names]
        bars = ax.barh(names, vals, color=colours)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals):
            ax.text(b.get_width(), b.get_y() + b.get_height() / 2, " " + format(v, spec),
                    va="center", fontsize=8)
        ax.set_xlim(0, max(vals + [1e-9]) * 1.25)
        if key.startswith("tok") and "oracle" in summaries:
            ax.axvline(0.95 * summaries["oracle"][key], color="#dc2626", ls="--", lw=1,
                       label="95% of oracle")
            ax.legend(fontsize=8, loc="lower right")
        if key == "ttft_p95_ms":
            ax.axvline(SLO_TTFT_MS, color="#dc2626", ls="--", lw=1, label="slo_ttft 2 s")
            ax.set_xlim(0, max(vals + [SLO_TTFT_MS]) * 1.25)
            ax.legend(fontsize=8, loc="lower right")
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle("Routing quality per policy (same workload)", fontsize=11)
    fig.tight_layout()
    name = "efficiency.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _timeline_plot(out: Path, run, summary: dict, meta: dict) -> str:
    centres, shares = share_series(run)
    ids = [n["id"] for n in meta["nodes"]]
    colours = dict(zip(ids, PALETTE * 2))
    fig, axes = plt.subplots(len(ids), 1, figsize=(11, 1.35 * len(ids) + 1.2), sharex=True)
    end = run.window_s
    for ax, node_id in zip(axes, ids):
        samples = run.samples[node_id]
        # Background: the node's ground-truth thermal state over time.
        for (t0, s0), (t1, _) in zip(samples, samples[1:]):
            colour = STATE_COLOURS.get(s0["thermal_state"])
            if colour:
                ax.axvspan(t0, t1, color=colour, lw=0)
        ax.bar(centres, [0 if math.isnan(v) else v * 100 for v in shares[node_id]],
               width=SHARE_BIN_S * 0.85, color=colours[node_id], alpha=0.9)
        ax.set_ylim(0, 100)
        ax.set_yticks([0, 50, 100])
        ax.set_ylabel(f"{node_id}\nshare %", fontsize=8)
        temp = ax.twinx()
        temp.plot([t for t, _ in samples], [s["temperature_c"] for _, s in samples],
                  color="#374151", lw=0.8)
        temp.set_ylabel("°C", fontsize=8)
        temp.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        if run.heat_at_s is not None:
            ax.axvline(run.heat_at_s, color="#111827", ls="--", lw=1.2, zorder=5)
        ax.set_xlim(0, end)
    axes[-1].set_xlabel("seconds since the first request (bars: share of the requests sent in "
                        f"each {SHARE_BIN_S:.0f} s; line: die temperature; dashed: heat event)",
                        fontsize=8)
    legend = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items() if c and s != "Unknown"]
    fig.legend(handles=legend, loc="upper right", ncol=3, fontsize=8, title="thermal state",
               title_fontsize=8)
    s = summary
    fig.suptitle(f"{run.policy}: traffic share per node and its thermal state — "
                 f"{s['tok_per_j']:.3f} tok/J, TTFT p95 {s['ttft_p95_ms'] or 0:.0f} ms",
                 fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    name = f"timeline-{run.policy}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name
