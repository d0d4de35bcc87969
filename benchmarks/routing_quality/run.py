"""Routing-quality suite: per scenario (scenarios.py), the same seeded workload (and thermal
event) against a fresh simulated fleet per policy, the oracle as the ceiling. Run it through
`benchmarks/routing-quality.sh` (which builds the binaries and this venv); `--help` lists options.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fleet as fleet_mod
from fleet import Fleet
from metrics import summarize
from runner import Outcome, RunData, measure
from scenarios import SCENARIOS, Scenario
from workload import requests

BASE_POLICIES = ("top", "weighted", "p2c", "slo", "round_robin", "least_connections", "oracle")
# A variant runs a policy with one [routing] line changed.
VARIANTS = {"top+average": ("top", 'score = "average"'),
            "top+marginal": ("top", 'score = "marginal"')}
QUICK_POLICIES = ("top", "least_connections", "oracle")
REPO = Path(__file__).resolve().parents[2]


def policy_and_extra(name: str, extra: str) -> tuple[str, str]:
    base, line = VARIANTS.get(name, (name, ""))
    return base, "\n".join(x for x in (extra, line) if x)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default all)")
    p.add_argument("--quick", action="store_true",
                   help="30 s of arrivals per scenario, policies top, least_connections and "
                        "oracle; results go to target/routing-quality/ unless --out says otherwise")
    p.add_argument("--policies", help="comma-separated, from "
                                      f"{','.join(BASE_POLICIES + tuple(VARIANTS))} "
                                      "(default: each scenario's own list)")
    p.add_argument("--duration", type=float, help="seconds of arrivals per run (default: the "
                                                  "scenario's; --quick 30)")
    p.add_argument("--grace", type=float,
                   help="seconds the window runs after arrivals stop (default: the scenario's; "
                        "--quick 20)")
    p.add_argument("--seed", type=int, help="seeds arrivals, lengths and models (default 42)")
    p.add_argument("--routing-extra", default="",
                   help="extra TOML lines for the proxy's [routing] table, e.g. 'hysteresis = 0.1'")
    p.add_argument("--probe-streams",
                   help="the reporters' --probe-streams, e.g. 2,4,8 (default: the reporter's)")
    p.add_argument("--thermal-check",
                   help="the reporters' --thermal-check, e.g. 250ms (default: the reporter's, off "
                        "for the command sensor the fleet uses)")
    p.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                   help="where wes-proxy, wes-reporter and wes-sim-node are")
    p.add_argument("--out", type=Path,
                   help="where the suite's summary and each scenario's report, plots and JSON "
                        "go (default docs/benchmarks)")
    p.add_argument("--raw", type=Path,
                   help="where each run's raw records go (default target/routing-quality/raw, "
                        "or raw-quick; not committed: about 1.5 MB a run)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the reports and plots from the raw records in --raw")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep each fleet's logs and proxy.toml (a failed start always keeps them)")
    a = p.parse_args()
    names = list(SCENARIOS) if a.scenario == "all" else a.scenario.split(",")
    for name in names:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    a.scenarios = [SCENARIOS[n] for n in names]
    a.policies = a.policies.split(",") if a.policies else None
    for name in a.policies or []:
        if name not in BASE_POLICIES and name not in VARIANTS:
            p.error(f"unknown policy {name!r}")
    a.out = a.out or (REPO / "target" / "routing-quality" if a.quick
                      else REPO / "docs" / "benchmarks")
    a.raw = a.raw or REPO / "target" / "routing-quality" / ("raw-quick" if a.quick else "raw")
    return a


def raw_path(raw: Path, policy: str) -> Path:
    return raw / f"{policy}.json"


def scenario_dir(out: Path, scenario: Scenario) -> Path:
    return out / "routing-quality" / scenario.name


def save_raw(raw: Path, run: RunData, meta: dict) -> None:
    path = raw_path(raw, run.policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(run)
    data["meta"] = meta
    path.write_text(json.dumps(data))


def load_raw(raw: Path, policy: str) -> tuple[RunData, dict]:
    data = json.loads(raw_path(raw, policy).read_text())
    meta = data.pop("meta")
    data["outcomes"] = [Outcome(**o) for o in data["outcomes"]]
    return RunData(**data), meta


def machine() -> dict:
    def sh(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
    info = dict(line.split(":", 1) for line in sh("lscpu").splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    cpu = info.get("Model name", "unknown CPU")
    if "CPU family" in info and "Model" in info:
        cpu += f" (family {info['CPU family']}, model {info['Model']})"
    if "Hypervisor vendor" in info:
        cpu += f", {info['Hypervisor vendor']} guest"
    commit = sh("git", "rev-parse", "--short", "HEAD") or "unknown"
    if sh("git", "status", "--porcelain", "--", "proxy", "node-reporter", "sim-node", "proto",
          "Cargo.lock", "Cargo.toml"):
        commit += " (with uncommitted changes in the crates)"
    return {"cpu": cpu, "cores": os.cpu_count(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_before": sh("uptime")}


def main() -> int:
    a = parse_args()
    # SIGTERM unwinds like Ctrl-C, so every `finally` below stops its fleet.
    signal.signal(signal.SIGTERM, _interrupt)
    import report  # matplotlib loads slowly, but every scenario reports at its end

    for scenario in a.scenarios:
        run_scenario(a, scenario, report)
    report.write_suite(a.out, [s for s in SCENARIOS.values()
                               if (scenario_dir(a.out, s) / report.SUMMARY).exists()])
    return 0


def run_scenario(a: argparse.Namespace, scenario: Scenario, report) -> None:
    fleet_mod.use(scenario)
    workload = dataclasses.replace(
        scenario.workload,
        duration_s=a.duration or (30.0 if a.quick else scenario.workload.duration_s),
        seed=a.seed if a.seed is not None else scenario.workload.seed)
    grace = a.grace if a.grace is not None else (20.0 if a.quick else scenario.grace_s)
    policies = a.policies or (QUICK_POLICIES if a.quick else scenario.policies)
    raw = a.raw / scenario.name
    heat = scenario.heat
    meta = {
        "scenario": scenario.name, "workload": dataclasses.asdict(workload), "grace_s": grace,
        "time_scale": scenario.time_scale, "heat": dataclasses.asdict(heat) if heat else None,
        "routing_extra": a.routing_extra, "probe_streams": a.probe_streams,
        "thermal_check": a.thermal_check, "nodes": [dataclasses.asdict(n) for n in scenario.nodes],
        "model": scenario.nodes[0].models[0],
    }
    if not a.report_only:
        schedule = requests(workload)
        print(f"routing-quality [{scenario.name}]: {len(schedule)} requests over "
              f"{workload.duration_s:.0f}s, window {workload.duration_s + grace:.0f}s, "
              f"policies {','.join(policies)}", file=sys.stderr)
        for policy in policies:
            t = time.monotonic()
            host = machine()
            base, extra = policy_and_extra(policy, a.routing_extra)
            # The oracle's fleet runs the proxy and reporters too (same probes, same load on
            # the machine); its requests bypass the proxy.
            f = Fleet(a.bin_dir, "top" if base == "oracle" else base, scenario.time_scale, extra,
                      a.probe_streams, a.thermal_check)
            ok = False
            try:
                f.start()
                startup = time.monotonic() - t
                run = asyncio.run(measure(f, policy, schedule, workload.duration_s, grace, heat))
                idle = {n: f.profiles[n]["power"]["idle_watts"] for n in f.profiles}
                ok = True
            finally:
                f.stop(keep_logs=a.keep_logs or not ok)
            host["load_after"] = subprocess.run(["uptime"], capture_output=True,
                                                text=True).stdout.strip()
            save_raw(raw, run, {**meta, "routing_extra": extra, "idle_watts": idle,
                                "startup_s": startup, "profiles": f.profiles, "machine": host})
            s = summarize(run, heat.node if heat else None, idle)
            print(f"routing-quality [{scenario.name}]: {policy:17s} {s['tok_per_j']:.4f} tok/J "
                  f"(above idle {s['tok_per_j_above_idle'] or 0:.3f}), TTFT p50 "
                  f"{s['ttft_p50_ms'] or 0:.0f} ms p95 {s['ttft_p95_ms'] or 0:.0f} ms, "
                  f"{s['completed']} ok {s['failed']} failed ({time.monotonic() - t:.0f}s)",
                  file=sys.stderr)
    done = [p for p in policies if raw_path(raw, p).exists()]
    report.write(scenario_dir(a.out, scenario), scenario, done, lambda p: load_raw(raw, p))


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("routing-quality: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
