"""The oracle: the harness routes each request itself, straight to a node, using ground truth
instead of telemetry.

What it knows, and nothing else:
- each node's simulator profile (`GET /wes-sim/profile`): the decode rate for the model, how
  throughput and power grow with concurrent requests, idle and busy watts, and how each
  thermal state scales speed and power;
- each node's live thermal state (`GET /wes-sim/state`, polled every 200 ms);
- exactly how many of its own requests each node holds (it is the only client);
- the same limits as the proxy: `max_concurrency` per node, Critical nodes excluded, PUE.

For each request it picks the node whose *marginal* efficiency is highest: the tokens per
second the node would add by taking one more request, divided by the watts (× PUE) it would
add, both from the simulator's own equations at the node's current thermal state. Idle power is
spent whether or not a node works, so tokens per extra joule is what fleet tokens per joule
depends on. It is greedy and instantaneous: it does not plan ahead (e.g. keep a node cool for
later), so a policy could in principle beat it; it is a ceiling for "perfect information now",
not a global optimum.
"""

from __future__ import annotations

import math

from fleet import NodeSpec

STATES = ("Normal", "Fair", "Serious", "Critical")


class NodeModel:
    """The simulator's equations (sim-node/src/model.rs) for one node and one model."""

    def __init__(self, spec: NodeSpec, profile: dict, model: str):
        self.spec = spec
        speed = profile["speed"]
        override = speed.get("models", {}).get(model, {})
        # The workload asks only for the profiles' reference model, whose rate is given as is.
        self.tok_s = override.get("decode_tok_s") or speed["decode_tok_s"]
        self.exponent = min(max(speed["concurrency_exponent"], 0.0), 1.0)
        self.max_parallel = profile["max_parallel"]
        p = profile["power"]
        self.idle, self.busy, self.single = p["idle_watts"], p["busy_watts"], p["single_stream_load"]
        t = profile["thermal"]
        self.speed_factor = {"Normal": 1.0, **{k.capitalize(): v for k, v in t["speed_factor"].items()}}
        self.power_factor = {"Normal": 1.0, **{k.capitalize(): v for k, v in t["power_factor"].items()}}

    def throughput(self, n: int, state: str) -> float:
        k = min(n, self.max_parallel)
        return 0.0 if k == 0 else self.tok_s * k ** self.exponent * self.speed_factor[state]

    def watts(self, n: int, state: str) -> float:
        k = min(n, self.max_parallel)
        util = 0.0 if k == 0 else 1.0 - (1.0 - self.single) * k ** (-max(self.exponent, 0.05))
        return self.idle + (self.busy - self.idle) * util * self.power_factor[state]

    def marginal(self, n: int, state: str) -> float:
        """Tokens per extra joule of one more request on top of `n`; -inf when it would only
        wait in the node's queue (no extra speed, no extra power)."""
        d_tok = self.throughput(n + 1, state) - self.throughput(n, state)
        d_w = (self.watts(n + 1, state) - self.watts(n, state)) * self.spec.pue
        return d_tok / d_w if d_w > 0 and d_tok > 0 else -math.inf


class Oracle:
    def __init__(self, models: dict[str, NodeModel], exclude=("Critical",)):
        self.models = models
        self.exclude = set(exclude)

    def pick(self, in_flight: dict[str, int], states: dict[str, str]) -> str | None:
        """The node for the next request, or None when every allowed node is full."""
        best, best_key = None, None
        for node_id, m in self.models.items():
            n = in_flight.get(node_id, 0)
            state = states.get(node_id, "Unknown")
            if n >= m.spec.max_concurrency or state not in STATES or state in self.exclude:
                continue
            key = (m.marginal(n, state), -n, node_id)
            if best_key is None or key > best_key:
                best, best_key = node_id, key
        return best
