"""docs/benchmarks/routing-quality.md and its plots, from the raw data of each run.

The report's "Findings" section is written by a person: the text between the findings markers
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

from fleet import NODES  # noqa: E402
from metrics import EXIT_SHARE, EXIT_WINDOW_S, SHARE_BIN_S, share_series, summarize  # noqa: E402
from oracle import NodeModel  # noqa: E402

REPORT = "routing-quality.md"
SUMMARY = "routing-quality.json"
TIMELINE_POLICIES = ("top", "round_robin", "oracle")
STATE_COLOURS = {"Normal": None, "Fair": "#fde68a", "Serious": "#fdba74", "Critical": "#f87171",
                 "Unknown": "#d1d5db"}
NODE_COLOURS = dict(zip([n.id for n in NODES],
                        ["#2563eb", "#16a34a", "#9333ea", "#6b7280", "#ea580c", "#b45309"]))
FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"
SLO_TTFT_MS = 2000.0  # routing.slo_ttft's default, the TTFT target


def _load1(uptime: str) -> float | None:
    m = re.search(r"load average: ([0-9.]+)", uptime)
    return float(m.group(1)) if m else None


def write(out: Path, policies: list[str], load_raw) -> None:
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
    path.write_text(_markdown(summaries, runs, meta, plots, findings))
    # The numbers behind the tables, for comparing runs (the raw records stay out of git).
    (out / SUMMARY).write_text(json.dumps(
        {"machine": meta["machine"], "workload": meta["workload"], "grace_s": meta["grace_s"],
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


def _markdown(summaries: dict, runs: dict, meta: dict, plots: list[str], findings: str) -> str:
    w = meta["workload"]
    oracle = summaries.get("oracle")
    machine = meta["machine"]
    heat = meta["heat"]
    lines = [
        "# Routing quality: efficiency policies against baselines and an oracle",
        "",
        "`benchmarks/routing-quality.sh` writes this file, its plots and `routing-quality.json` (the",
        "numbers; each run's raw records go to `target/routing-quality/raw/`). `--quick` runs a",
        "3-minute subset. Each policy runs",
        "against a fresh simulated fleet: six `wes-sim-node`s, a real `wes-reporter` per node (its",
        "`command` sensor reads the node's `/wes-sim/state` every second, and probes the node once",
        "at start), and the real `wes-proxy` (release build) with the policy in its TOML. The",
        "same seeded workload and the same thermal event hit every run.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {machine['cpu']}, {machine['cores']} cores (shared with other work) |",
        f"| date | {machine['date']} |",
        f"| commit | {machine['commit']} |",
        f"| load (`uptime`) before | {machine['load_before']} |",
        f"| load (`uptime`) after | {machine['load_after']} |",
        f"| workload | open-loop Poisson, {w['rate']} requests/s for {w['duration_s']:.0f} s "
        f"({sum(1 for _ in runs[next(iter(runs))].outcomes)} requests), seed {w['seed']}; "
        f"`/api/generate` streaming, model `{meta['model']}`; prompt {w['prompt_tokens'][0]}–"
        f"{w['prompt_tokens'][1]} tokens, output (`num_predict`) {w['output_tokens'][0]}–"
        f"{w['output_tokens'][1]} tokens, both uniform |",
        f"| measured window | {w['duration_s'] + meta['grace_s']:.0f} s from the first request "
        f"(arrivals, then {meta['grace_s']:.0f} s for the last answers); the same for every run |",
        f"| thermal clock | `--time-scale {meta['time_scale']:g}` (heat moves {meta['time_scale']:g}× "
        f"faster than wall time; tokens and energy are real time) |",
    ]
    if heat:
        lines.append(f"| thermal event | at t = {heat['at_fraction'] * w['duration_s']:.0f} s "
                     f"(1/3 of the arrivals), `POST /wes-sim/heat {_json(heat['body'])}` on "
                     f"`{heat['node']}`, the node every efficiency policy favours |")
    extra = meta.get("routing_extra") or ""
    lines.append("| proxy config | `[routing]` defaults (`exploration_share` 0.05, `hysteresis` 0.05, "
                 "`slo_ttft` 2s, `queue_timeout` 10s, `exclude_thermal = [\"Critical\"]`)"
                 + (f"; changed by `{extra}`" if extra else "") + "; `[[nodes]]` as below |")
    lines += [
        "",
        "The fleet (`config/demo-proxy.toml`'s mix). Single-stream figures are the profiles' own,",
        "for the workload's model, in the Normal state; the efficient node is the M2 by a factor",
        "of three:",
        "",
        "| node | profile | PUE | max_concurrency | tok/s, 1 stream | W, idle → 1 stream | tok/J, 1 stream (× PUE) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n in meta["nodes"]:
        m = _model(n, meta)
        if m is None:
            continue
        tok, watts = m.throughput(1, "Normal"), m.watts(1, "Normal")
        lines.append(f"| `{n['id']}` | `{n['profile']}` | {n['pue']:g} | {n['max_concurrency']} | "
                     f"{tok:.0f} | {m.idle:.0f} → {watts:.0f} | {tok / (watts * n['pue']):.2f} |")
    lines += [
        "",
        "## Results",
        "",
        "| policy | tok/J | vs oracle | tok/J × PUE | tok/J above idle | TTFT p50 | TTFT p95 | "
        "completed | failed | unfinished | hot node's share, before → after | left after | "
        "sent to it while Critical | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for p, s in summaries.items():
        hn = s["heat_node"]
        node = s["nodes"].get(hn, {}) if hn else {}
        vs = (s["tok_per_j"] / oracle["tok_per_j"]) if oracle and p != "oracle" else None
        left = ("never" if s["exit_s"] is None else f"{s['exit_s']:.1f} s") if hn else "–"
        crit = sum(o.node == hn and o.node_state == "Critical" for o in runs[p].outcomes) if hn else None
        lines.append(
            f"| {'**' + p + '** (default)' if p == 'top' else p} | {_fmt(s['tok_per_j'], '.3f')} | "
            f"{_pct(vs, '.1f') if vs else '–'} | {_fmt(s['tok_per_j_facility'], '.3f')} | "
            f"{_fmt(s['tok_per_j_above_idle'], '.3f')} | {_fmt(s['ttft_p50_ms'])} ms | "
            f"{_fmt(s['ttft_p95_ms'])} ms | {s['completed']} | {s['failed']} | {s['unfinished']} | "
            f"{_pct(node.get('share_before'))} → {_pct(node.get('share_after'))} | {left} | "
            f"{_fmt(crit, 'd')} | {_fmt(s.get('load_1min_before'), '.2f')} |")
    lines += [
        "",
        "- **tok/J**: output tokens the clients received ÷ the sum over all six nodes of the",
        "  `energy_joules` counter's increase across the window (idle nodes burn energy too).",
        "  **× PUE** weighs each node's energy by its site PUE (energy at the wall; the H100's 1.3",
        "  is the only PUE ≠ 1), which is what WES and the oracle optimise. **above idle** subtracts",
        "  each node's idle power × the window: it shows the part routing can change.",
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
            "  200 ms and exactly how many requests it holds. It picks the node whose next request",
            "  adds the most tokens per second per added watt (× PUE), from the simulator's own",
            "  equations, within the same `max_concurrency` and never a Critical node; when all are",
            "  full it waits up to 10 s like the proxy's queue. Greedy and instantaneous, so it is a",
            "  ceiling for perfect information now, not a global optimum.",
        ]
    if "top" in summaries and oracle:
        s = summaries["top"]
        ratio = s["tok_per_j"] / oracle["tok_per_j"]
        ratio_f = s["tok_per_j_facility"] / oracle["tok_per_j_facility"]
        met_eff, met_ttft = ratio >= 0.95, (s["ttft_p95_ms"] or math.inf) <= SLO_TTFT_MS
        lines += [
            "",
            f"**Target** (the default policy `top` within 95% of the oracle's tokens per joule, with "
            f"p95 TTFT within `slo_ttft` = 2 s): **{'met' if met_eff and met_ttft else 'missed'}**. "
            f"`top` reaches {ratio * 100:.1f}% of the oracle's tok/J ({ratio_f * 100:.1f}% × PUE, "
            f"{s['tok_per_j_above_idle'] / oracle['tok_per_j_above_idle'] * 100:.1f}% above idle) "
            f"with p95 TTFT {_fmt(s['ttft_p95_ms'])} ms.",
        ]
    lines += ["", "Where the requests went (share of all requests sent, whole run):", "",
              "| policy | " + " | ".join(f"`{n.id}`" for n in NODES) + " |",
              "|---|" + "---:|" * len(NODES)]
    for p, s in summaries.items():
        lines.append(f"| {p} | " + " | ".join(
            _pct(s["nodes"][n.id]["requests"] / s["sent"] if s["sent"] else None) for n in NODES) + " |")
    lines += ["", "## Plots", ""]
    for png in plots:
        lines.append(f"![{png}]({png})")
        lines.append("")
    lines += ["## Findings", "", FINDINGS_START, findings, FINDINGS_END, ""]
    return "\n".join(lines)


def _json(body: dict) -> str:
    return "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"


def _model(node: dict, meta: dict) -> NodeModel | None:
    profile = meta.get("profiles", {}).get(node["id"])
    if profile is None:
        return None
    from fleet import NodeSpec
    spec = NodeSpec(node["id"], node["profile"], node["pue"], node["max_concurrency"],
                    tuple(node["models"]))
    return NodeModel(spec, profile, meta["model"])


def _efficiency_plot(out: Path, summaries: dict) -> str:
    names = list(summaries)
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(names) + 1.8))
    colours = ["#111827" if p == "oracle" else "#2563eb" if p == "top" else "#93c5fd"
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
    fig.suptitle("Routing quality per policy (same workload and thermal event)", fontsize=11)
    fig.tight_layout()
    name = "routing-quality-efficiency.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _timeline_plot(out: Path, run, summary: dict, meta: dict) -> str:
    centres, shares = share_series(run)
    fig, axes = plt.subplots(len(NODES), 1, figsize=(11, 1.35 * len(NODES) + 1.2), sharex=True)
    end = run.window_s
    for ax, spec in zip(axes, NODES):
        samples = run.samples[spec.id]
        # Background: the node's ground-truth thermal state over time.
        for (t0, s0), (t1, _) in zip(samples, samples[1:]):
            colour = STATE_COLOURS.get(s0["thermal_state"])
            if colour:
                ax.axvspan(t0, t1, color=colour, lw=0)
        ax.bar(centres, [0 if math.isnan(v) else v * 100 for v in shares[spec.id]],
               width=SHARE_BIN_S * 0.85, color=NODE_COLOURS[spec.id], alpha=0.9)
        ax.set_ylim(0, 100)
        ax.set_yticks([0, 50, 100])
        ax.set_ylabel(f"{spec.id}\nshare %", fontsize=8)
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
    name = f"routing-quality-{run.policy}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name
