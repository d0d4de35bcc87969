"""The same load through 1, 2 and 3 proxy replicas behind HAProxy (benchmarks/replicas.sh):
per node the overshoot over max_concurrency (p99 and max of its own in-flight count, read from
the simulator every few ms), failures, each node's share of the traffic, and the fleet's
tokens per joule (the simulators' energy counters)."""

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "clients"))

import test_replicas as T  # noqa: E402
from conftest import get_json  # noqa: E402

CALLERS = int(os.environ.get("CALLERS", "12"))
SECONDS = float(os.environ.get("SECONDS", "20"))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(n):
    replicas = tuple(f"p{i + 1}" for i in range(n))
    c = T.start_cluster(Path(tempfile.mkdtemp(prefix=f"wes-bench-replicas-{n}-")), replicas)
    try:
        energy = lambda: {k: get_json(f"http://{a}/wes-sim/state")["energy_joules"]
                          for k, a in c.sims.items()}
        before = energy()
        load = T.Load(c, CALLERS).run(SECONDS)
        after = energy()
        ok = [r for r in load.results if r.ok]
        joules = sum(after[k] - before[k] for k in after)
        share = {k: sum(1 for r in ok if r.node == k) for k in c.sims}
        row = {
            "replicas": n,
            "streams": len(load.results),
            "failed": len(load.results) - len(ok),
            "p99": {k: percentile(v, 99) for k, v in load.readings.items()},
            "max": load.peaks,
            "share": share,
            "tok_per_j": len(ok) * T.TOKENS / joules if joules else float("nan"),
            "errors": sorted({str(r.error)[:160] for r in load.results if not r.ok}),
        }
        return row
    finally:
        c.f.close()


def main():
    counts = [int(n) for n in os.environ.get("REPLICAS", "1,2,3").split(",")]
    rows = [run(n) for n in counts]
    print(f"{CALLERS} callers, {SECONDS:.0f} s each, streams of {T.TOKENS} tokens, two simulated "
          f"nodes (rtx-4090, `max_concurrency` {T.MAX_CONCURRENCY}), HAProxy (TCP, round robin) "
          "in front, every reporter streaming to every replica.\n")
    print("| replicas | streams | failed | in flight per node, p99 | max | share of streams | fleet tokens/J |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        nodes = sorted(r["max"])
        p99 = ", ".join(f"{k} {r['p99'][k]}" for k in nodes)
        mx = ", ".join(f"{k} {r['max'][k]}" for k in nodes)
        total = sum(r["share"].values()) or 1
        share = ", ".join(f"{k} {100 * r['share'][k] / total:.0f}%" for k in nodes)
        print(f"| {r['replicas']} | {r['streams']} | {r['failed']} | {p99} | {mx} | {share} | "
              f"{r['tok_per_j']:.3f} |")
    for r in rows:
        for e in r["errors"]:
            print(f"\nFailed with {r['replicas']} replicas: `{e}`")


if __name__ == "__main__":
    main()
