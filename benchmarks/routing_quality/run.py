"""Routing-quality benchmark: the same seeded workload and thermal event against a fresh
simulated fleet per policy, the oracle as the ceiling. Run it through
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
from fleet import NODES, Fleet
from metrics import summarize
from runner import Heat, Outcome, RunData, measure
from workload import Workload, requests

ALL_POLICIES = ("top", "weighted", "p2c", "slo", "round_robin", "least_connections", "oracle")
QUICK_POLICIES = ("top", "round_robin", "oracle")
REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="30 s of arrivals, policies top, round_robin and oracle; results go to "
                        "target/routing-quality/ unless --out says otherwise")
    p.add_argument("--policies", help=f"comma-separated, from {','.join(ALL_POLICIES)}")
    p.add_argument("--duration", type=float, help="seconds of arrivals per run (default 84; --quick 30)")
    p.add_argument("--grace", type=float,
                   help="seconds the window runs after arrivals stop (default 24; --quick 20)")
    p.add_argument("--rate", type=float, default=Workload.rate, help="requests per second")
    p.add_argument("--seed", type=int, default=Workload.seed,
                   help="seeds arrivals and prompt and output lengths (the same for every policy)")
    p.add_argument("--time-scale", type=float, default=8.0,
                   help="the simulated thermal clock runs this much faster (default 8)")
    p.add_argument("--heat-node", default="m2-studio")
    p.add_argument("--heat", default='{"temperature_c": 105, "ambient_c": 80}',
                   help="JSON body of POST /wes-sim/heat on --heat-node ('' for no event)")
    p.add_argument("--heat-at", type=float, default=1 / 3,
                   help="when, as a fraction of the arrival window (default 1/3)")
    p.add_argument("--routing-extra", default="",
                   help="extra TOML lines for the proxy's [routing] table, e.g. 'hysteresis = 0.1'")
    p.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                   help="where wes-proxy, wes-reporter and wes-sim-node are")
    p.add_argument("--out", type=Path,
                   help="where the report, its plots and routing-quality.json go "
                        "(default docs/benchmarks)")
    p.add_argument("--raw", type=Path,
                   help="where each run's raw records go (default target/routing-quality/raw, "
                        "or raw-quick; not committed: about 1.5 MB a run)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report and plots from the raw records in --raw")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep each fleet's logs and proxy.toml (a failed start always keeps them)")
    a = p.parse_args()
    a.policies = (a.policies.split(",") if a.policies
                  else QUICK_POLICIES if a.quick else ALL_POLICIES)
    for name in a.policies:
        if name not in ALL_POLICIES:
            p.error(f"unknown policy {name!r}")
    a.duration = a.duration or (30.0 if a.quick else 84.0)
    a.grace = a.grace if a.grace is not None else (20.0 if a.quick else 24.0)
    a.out = a.out or (REPO / "target" / "routing-quality" if a.quick
                      else REPO / "docs" / "benchmarks")
    a.raw = a.raw or REPO / "target" / "routing-quality" / ("raw-quick" if a.quick else "raw")
    return a


def raw_path(raw: Path, policy: str) -> Path:
    return raw / f"{policy}.json"


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
    workload = Workload(rate=a.rate, duration_s=a.duration, seed=a.seed)
    heat_body = json.loads(a.heat) if a.heat else None
    heat = Heat(a.heat_node, heat_body, a.heat_at) if heat_body else None
    meta = {
        "workload": dataclasses.asdict(workload), "grace_s": a.grace, "time_scale": a.time_scale,
        "heat": dataclasses.asdict(heat) if heat else None, "routing_extra": a.routing_extra,
        "nodes": [dataclasses.asdict(n) for n in NODES], "model": fleet_mod.MODEL,
    }
    if not a.report_only:
        schedule = requests(workload)
        print(f"routing-quality: {len(schedule)} requests over {a.duration:.0f}s "
              f"({a.rate}/s), window {a.duration + a.grace:.0f}s, policies {','.join(a.policies)}",
              file=sys.stderr)
        for policy in a.policies:
            t = time.monotonic()
            host = machine()
            # The oracle's fleet runs the proxy and reporters too (same probes, same load on
            # the machine); its requests bypass the proxy.
            f = Fleet(a.bin_dir, "top" if policy == "oracle" else policy, a.time_scale,
                      a.routing_extra)
            ok = False
            try:
                f.start()
                startup = time.monotonic() - t
                run = asyncio.run(measure(f, policy, schedule, a.duration, a.grace, heat))
                idle = {n: f.profiles[n]["power"]["idle_watts"] for n in f.profiles}
                ok = True
            finally:
                f.stop(keep_logs=a.keep_logs or not ok)
            host["load_after"] = subprocess.run(["uptime"], capture_output=True,
                                                text=True).stdout.strip()
            save_raw(a.raw, run, {**meta, "idle_watts": idle, "startup_s": startup,
                                  "profiles": f.profiles, "machine": host})
            s = summarize(run, a.heat_node if heat else None, idle)
            print(f"routing-quality: {policy:17s} {s['tok_per_j']:.4f} tok/J "
                  f"(above idle {s['tok_per_j_above_idle'] or 0:.3f}), TTFT p50 "
                  f"{s['ttft_p50_ms'] or 0:.0f} ms p95 {s['ttft_p95_ms'] or 0:.0f} ms, "
                  f"{s['completed']} ok {s['failed']} failed, exit {s['exit_s']}, "
                  f"shares after {_shares(s)} ({time.monotonic() - t:.0f}s)", file=sys.stderr)
    import report  # matplotlib loads slowly; only when it is needed

    done = [p for p in a.policies if raw_path(a.raw, p).exists()]
    report.write(a.out, done, lambda p: load_raw(a.raw, p))
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


def _shares(s: dict) -> str:
    return " ".join(f"{n}={(v['share_after'] or 0) * 100:.0f}%" for n, v in s["nodes"].items())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("routing-quality: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
