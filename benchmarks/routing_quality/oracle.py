"""The oracle: the harness routes each request itself, straight to a node, using ground truth
instead of telemetry.

What it knows, and nothing else:
- each node's simulator profile (`GET /wes-sim/profile`): the decode rate for the model, how
  throughput and power grow with concurrent requests, idle and busy watts, and how each
  thermal state scales speed and power;
- each node's live thermal state (`GET /wes-sim/state`, polled every 200 ms);
- exactly how many of its own requests each node holds (it is the only client);
- which models each node has in memory (`loaded` in `/wes-sim/state`, plus the models it has
  just sent requests for), each model's size (`/api/tags`), the node's load rate and memory;
- the same limits as the proxy: `max_concurrency` per node, Critical nodes excluded, PUE.

For each request it picks the node whose *marginal* efficiency is highest: the tokens per
second the node would add by taking one more request, divided by the watts (× PUE) it would
add, both from the simulator's own equations at the node's current thermal state. Idle power is
spent whether or not a node works, so tokens per extra joule is what fleet tokens per joule
depends on. Where the model is cold, the request also pays the load: its `num_predict` tokens
over their own energy plus the load's (seconds at the node's added power), plus the reload of
each idle model the load would evict. It is greedy and instantaneous: it does not plan ahead (e.g. keep a node cool for
later), so a policy could in principle beat it; it is a ceiling for "perfect information now",
not a global optimum.
"""

from __future__ import annotations

import dataclasses
import math

from scenarios import NodeSpec

STATES = ("Normal", "Fair", "Serious", "Critical")


class NodeModel:
    """The simulator's equations (sim-node/src/model.rs) for one node and one model."""

    def __init__(self, spec: NodeSpec, profile: dict, model: str):
        self.spec = spec
        speed = profile["speed"]
        override = speed.get("models", {}).get(model, {})
        # The workload asks only for the profiles' reference model, whose rate is given as is.
        # Scenarios give every model's rate as is (the reference model's is the profile's own).
        self.tok_s = override.get("decode_tok_s") or speed["decode_tok_s"]
        self.exponent = min(max(speed["concurrency_exponent"], 0.0), 1.0)
        self.max_parallel = profile["max_parallel"]
        p = profile["power"]
        self.idle, self.busy, self.single = p["idle_watts"], p["busy_watts"], p["single_stream_load"]
        self.power_exponent = min(max(p.get("concurrency_exponent") or self.exponent, 0.0), 1.0)
        t = profile["thermal"]
        self.speed_factor = {"Normal": 1.0, **{k.capitalize(): v for k, v in t["speed_factor"].items()}}
        self.power_factor = {"Normal": 1.0, **{k.capitalize(): v for k, v in t["power_factor"].items()}}

    def throughput(self, n: int, state: str) -> float:
        k = min(n, self.max_parallel)
        return 0.0 if k == 0 else self.tok_s * k ** self.exponent * self.speed_factor[state]

    def watts(self, n: int, state: str) -> float:
        k = min(n, self.max_parallel)
        util = 0.0 if k == 0 else 1.0 - (1.0 - self.single) * k ** (-max(self.power_exponent, 0.05))
        return self.idle + (self.busy - self.idle) * util * self.power_factor[state]

    def marginal(self, n: int, state: str) -> float:
        """Tokens per extra joule of one more request on top of `n`; -inf when it would only
        wait in the node's queue (no extra speed, no extra power)."""
        d_tok = self.throughput(n + 1, state) - self.throughput(n, state)
        d_w = (self.watts(n + 1, state) - self.watts(n, state)) * self.spec.pue
        return d_tok / d_w if d_w > 0 and d_tok > 0 else -math.inf


@dataclasses.dataclass
class Memory:
    """What the oracle knows of one node's memory."""
    load_gb_per_s: float
    memory_bytes: int  # 0: unlimited
    sizes: dict[str, int]  # model -> bytes


class Oracle:
    def __init__(self, models: dict[str, dict[str, NodeModel]], memory: dict[str, Memory],
                 exclude=("Critical",)):
        self.models = models  # node -> model -> equations
        self.memory = memory
        self.exclude = set(exclude)

    def load_s(self, node: str, model: str) -> float:
        m = self.memory[node]
        return 0.0 if m.load_gb_per_s <= 0 else m.sizes.get(model, 0) / (m.load_gb_per_s * 1e9)

    def evicted(self, node: str, model: str, loaded: set[str]) -> list[str]:
        """The loaded models a load of `model` would push out (largest first: the fewest)."""
        m = self.memory[node]
        if not m.memory_bytes or model in loaded:
            return []
        used = sum(m.sizes.get(x, 0) for x in loaded)
        out = []
        for x in sorted(loaded, key=lambda x: -m.sizes.get(x, 0)):
            if used + m.sizes.get(model, 0) <= m.memory_bytes:
                break
            used -= m.sizes.get(x, 0)
            out.append(x)
        return out

    def value(self, node: str, model: str, n: int, state: str, tokens: int,
              loaded: set[str] | None) -> float:
        """Tokens per joule this request adds on `node` with `n` in flight, its load included."""
        eq = self.models[node][model]
        marginal = eq.marginal(n, state)
        if loaded is None or model in loaded or marginal == -math.inf:
            return marginal
        added_w = (eq.watts(n + 1, state) - eq.watts(n, state)) * eq.spec.pue
        first_w = (eq.watts(1, state) - eq.watts(0, state)) * eq.spec.pue
        joules = self.load_s(node, model) * added_w
        joules += sum(self.load_s(node, x) * first_w for x in self.evicted(node, model, loaded))
        return tokens / (tokens / marginal + joules)

    def pick(self, model: str, tokens: int, in_flight: dict[str, int], states: dict[str, str],
             loaded: dict[str, set[str]]) -> str | None:
        """The node for the next request, or None when every allowed node is full."""
        best, best_key = None, None
        for node_id, by_model in self.models.items():
            eq = by_model.get(model)
            if eq is None:
                continue
            n = in_flight.get(node_id, 0)
            state = states.get(node_id, "Unknown")
            if n >= eq.spec.max_concurrency or state not in STATES or state in self.exclude:
                continue
            v = self.value(node_id, model, n, state, tokens, loaded.get(node_id))
            key = (v, -n, node_id)
            if best_key is None or key > best_key:
                best, best_key = node_id, key
        return best
