"""Numbers from one run's raw records."""

from __future__ import annotations

import math

import fleet
from runner import CUT, RunData

EXIT_WINDOW_S = 10.0  # "traffic left": the node's share of the next 10 s of arrivals
EXIT_SHARE = 0.10
SHARE_BIN_S = 5.0  # time bins of the share plots


def nearest_rank(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as wes-sim-load reports them)."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(q * len(v)))) - 1]


def exit_time(run: RunData, node: str) -> float | None:
    """Seconds from the heat event until the node's share of the requests sent in the next
    EXIT_WINDOW_S first falls below EXIT_SHARE; None when it never does (or no event)."""
    if run.heat_at_s is None:
        return None
    sent = [(o.sent_s, o.node) for o in run.outcomes if o.sent_s >= run.heat_at_s]
    last_arrival = max((t for t, _ in sent), default=run.heat_at_s)
    for start in [run.heat_at_s] + [t for t, _ in sent]:
        if start + EXIT_WINDOW_S > last_arrival:
            return None
        window = [n for t, n in sent if start <= t < start + EXIT_WINDOW_S]
        if window and sum(n == node for n in window) / len(window) < EXIT_SHARE:
            return start - run.heat_at_s
    return None


def summarize(run: RunData, heat_node: str | None, idle_watts: dict[str, float]) -> dict:
    ok = [o for o in run.outcomes if o.ok]
    cut = [o for o in run.outcomes if o.error == CUT]
    tokens = sum(o.tokens for o in run.outcomes)
    energy = {n: run.energy_end[n] - run.energy_start[n] for n in run.energy_start}
    total = sum(energy.values())
    pue = {s.id: s.pue for s in fleet.NODES}
    facility = sum(e * pue[n] for n, e in energy.items())
    idle = sum(idle_watts[n] * run.window_s for n in energy)
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    te = run.heat_at_s
    per_node = {}
    for s in fleet.NODES:
        mine = [o for o in run.outcomes if o.node == s.id]
        per_node[s.id] = {
            "requests": len(mine),
            "tokens": sum(o.tokens for o in mine),
            "energy_j": energy[s.id],
            "share_before": _share(run, s.id, 0.0, math.inf if te is None else te),
            "share_after": None if te is None else _share(run, s.id, te, math.inf),
        }
    errors: dict[str, int] = {}
    for o in run.outcomes:
        if not o.ok and o.error != CUT:
            key = (o.error or f"HTTP {o.status}")[:120]
            errors[key] = errors.get(key, 0) + 1
    def counted(key: str) -> int:
        return sum(run.samples[n][-1][1].get(key, 0) - run.samples[n][0][1].get(key, 0)
                   for n in run.samples if run.samples[n])

    return {
        "policy": run.policy,
        "loads": counted("loads"),
        "evictions": counted("evictions"),
        "window_s": run.window_s,
        "heat_at_s": te,
        "sent": len(run.outcomes),
        "completed": len(ok),
        "failed": len(run.outcomes) - len(ok) - len(cut),
        "unfinished": len(cut),
        "errors": errors,
        "tokens": tokens,
        "energy_j": total,
        "tok_per_j": tokens / total if total > 0 else None,
        "tok_per_j_facility": tokens / facility if facility > 0 else None,
        "tok_per_j_above_idle": tokens / (total - idle) if total > idle else None,
        "ttft_p50_ms": _ms(nearest_rank(ttft, 0.50)),
        "ttft_p95_ms": _ms(nearest_rank(ttft, 0.95)),
        "ttft_p99_ms": _ms(nearest_rank(ttft, 0.99)),
        "heat_node": heat_node,
        "exit_s": exit_time(run, heat_node) if heat_node else None,
        "sent_while_critical": sum(o.node_state == "Critical" for o in run.outcomes),
        "sent_while_serious": sum(o.node_state == "Serious" for o in run.outcomes),
        "nodes": per_node,
    }


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def _share(run: RunData, node: str, t0: float, t1: float) -> float | None:
    sent = [o for o in run.outcomes if t0 <= o.sent_s < t1]
    return sum(o.node == node for o in sent) / len(sent) if sent else None


def share_series(run: RunData) -> tuple[list[float], dict[str, list[float]]]:
    """Per SHARE_BIN_S bin of send times: bin centres, and each node's share of the bin."""
    if not run.outcomes:
        return [], {}
    end = max(o.sent_s for o in run.outcomes)
    bins = int(end // SHARE_BIN_S) + 1
    counts = {s.id: [0] * bins for s in fleet.NODES}
    totals = [0] * bins
    for o in run.outcomes:
        b = int(o.sent_s // SHARE_BIN_S)
        totals[b] += 1
        if o.node in counts:
            counts[o.node][b] += 1
    centres = [(b + 0.5) * SHARE_BIN_S for b in range(bins)]
    return centres, {n: [c / t if t else math.nan for c, t in zip(cs, totals)]
                     for n, cs in counts.items()}
