"""The fixed workload: the same seeded list of requests for every policy.

Open loop: request i is sent at its arrival time whether or not earlier ones have finished, as
real clients do. Arrivals are Poisson (exponential gaps), or waves of `burst_size` requests at
once every `burst_every_s`; prompt and output lengths uniform; each request's model drawn from
`models` by weight.
"""

from __future__ import annotations

import dataclasses
import random

# Filler for prompts; the simulator counts about four characters per prompt token.
_WORDS = ("why", "does", "the", "fleet", "route", "each", "request", "to", "node", "that",
          "turns", "watts", "into", "tokens", "best", "and", "what", "happens", "when", "it",
          "gets", "hot", "explain", "briefly", "with", "an", "example")


@dataclasses.dataclass(frozen=True)
class Workload:
    rate: float = 2.0  # mean arrivals per second
    duration_s: float = 90.0  # arrivals stop after this
    prompt_tokens: tuple[int, int] = (32, 512)  # uniform, inclusive
    output_tokens: tuple[int, int] = (64, 192)  # num_predict, uniform, inclusive
    seed: int = 42
    models: tuple[tuple[str, float], ...] = (("llama3.2:3b", 1.0),)  # (model, weight)
    burst_every_s: float = 0.0  # > 0: waves instead of Poisson arrivals
    burst_size: int = 0


@dataclasses.dataclass(frozen=True)
class Request:
    index: int
    at_s: float  # arrival, seconds after the run's start
    prompt: str
    prompt_tokens: int
    num_predict: int
    model: str


def _prompt(rng: random.Random, tokens: int) -> str:
    chars = tokens * 4
    words: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(_WORDS)
        words.append(w)
        n += len(w) + 1
    return " ".join(words)


def arrival_times(w: Workload, rng: random.Random) -> list[float]:
    if w.burst_every_s > 0:
        waves = int(w.duration_s // w.burst_every_s)
        return [(k + 0.5) * w.burst_every_s for k in range(waves) for _ in range(w.burst_size)]
    times, t = [], 0.0
    while True:
        t += rng.expovariate(w.rate)
        if t >= w.duration_s:
            return times
        times.append(t)


def requests(w: Workload) -> list[Request]:
    rng = random.Random(w.seed)
    names = [m for m, _ in w.models]
    weights = [wt for _, wt in w.models]
    out: list[Request] = []
    for t in arrival_times(w, rng):
        p = rng.randint(*w.prompt_tokens)
        out.append(Request(len(out), t, _prompt(rng, p), p, rng.randint(*w.output_tokens),
                           rng.choices(names, weights)[0]))
    return out
