"""The suite's scenarios: each a fleet, a workload and an optional thermal event, chosen so that
one thing a router must get right decides the result.

- thermal: the demo fleet at light load; the node every efficiency policy favours overheats.
- high-load: nodes that batch well (slow and wasteful alone, efficient with many streams) beside
  nodes that are efficient alone but gain almost nothing from a second stream, under enough load
  that the fleet is busy all the time.
- multi-model: four models, nodes whose memory holds only some of them at once; a cold load
  takes seconds at the node's power and may evict another model.
- bursts: the demo fleet hit by waves of simultaneous requests.

Profiles not in config/profiles/ are written here, as the simulator's TOML.
"""

from __future__ import annotations

import dataclasses

from workload import Workload

MODEL = "llama3.2:3b"


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    id: str
    profile: str  # a built-in name (config/profiles/) or a key of Scenario.profiles
    pue: float
    max_concurrency: int  # the proxy's [[nodes]] max_concurrency, and the oracle's limit
    models: tuple[str, ...]  # the first is the one the reporter probes
    # The memory models load into, told to the reporter (--model-memory); 0: not told.
    memory_gb: float = 0.0


@dataclasses.dataclass(frozen=True)
class Heat:
    node: str
    body: dict
    at_fraction: float  # of the arrival window


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    about: str  # what the scenario tests, for its report
    nodes: tuple[NodeSpec, ...]
    workload: Workload
    grace_s: float
    heat: Heat | None = None
    time_scale: float = 8.0
    policies: tuple[str, ...] = ("top", "top+average", "least_connections", "oracle")
    # Extra targets: the default policy at least this many times least_connections' tok/J.
    beat_least_connections: float | None = None
    profiles: tuple[tuple[str, str], ...] = ()


# The demo fleet (config/demo-proxy.toml), except `max_concurrency` of the fanless boards:
# their profile decodes one request at a time (OLLAMA_NUM_PARALLEL=1), so a second slot in the
# proxy only queues a request behind a 9 s answer on the node.
DEMO_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("m2-studio", "apple-m2", 1.0, 4, (MODEL, "smollm2:135m", "nomic-embed-text")),
    NodeSpec("rtx4090-ws", "rtx-4090", 1.0, 4, (MODEL, "llama3.1:8b", "smollm2:135m")),
    NodeSpec("h100-dc", "h100", 1.3, 8, (MODEL, "llama3.1:8b", "nomic-embed-text")),
    NodeSpec("ryzen-desk", "ryzen-cpu", 1.0, 2, (MODEL, "smollm2:135m")),
    NodeSpec("jetson-a", "fanless-edge", 1.0, 1, (MODEL, "smollm2:135m")),
    NodeSpec("jetson-b", "fanless-edge", 1.0, 1, (MODEL, "smollm2:135m")),
)

_COOL = """
[thermal]
ambient_c = 25.0
thermal_resistance_c_per_w = 0.05
heat_capacity_j_per_c = 5000.0
fair_c = 150.0
serious_c = 160.0
critical_c = 170.0
hysteresis_c = 2.0
speed_factor = { fair = 0.9, serious = 0.7, critical = 0.5 }
power_factor = { fair = 0.95, serious = 0.85, critical = 0.7 }
"""

# Batches well: 60 tok/s alone at 170 W (0.35 tok/J), 8 streams make 392 tok/s at 280 W (1.4).
BATCHER = """name = "batcher"
description = "a server GPU that batches: slow and wasteful alone, efficient with many streams"
max_parallel = 8
max_queue = 512
load_gb_per_s = 4.0

[power]
idle_watts = 40.0
busy_watts = 300.0
single_stream_load = 0.5

[speed]
reference_model_bytes = 2019393189
decode_tok_s = 60.0
prompt_tok_s = 8000.0
max_decode_tok_s = 500.0
max_prompt_tok_s = 20000.0
concurrency_exponent = 0.9
""" + _COOL

# Efficient alone (100 tok/s at 74 W: 1.35 tok/J), but a second stream adds 11 tok/s for 88 W.
SOLO = """name = "solo"
description = "a box that is efficient alone and gains almost nothing from a second stream"
max_parallel = 4
max_queue = 512
load_gb_per_s = 4.0

[power]
idle_watts = 15.0
busy_watts = 250.0
single_stream_load = 0.25
concurrency_exponent = 1.0

[speed]
reference_model_bytes = 2019393189
decode_tok_s = 100.0
prompt_tok_s = 3000.0
max_decode_tok_s = 500.0
max_prompt_tok_s = 20000.0
concurrency_exponent = 0.15
""" + _COOL

# The multi-model mix: four models of 1.3 to 4.9 GB; 7 GB of memory holds two or three of them.
MIX = (("llama3.1:8b", 0.4), (MODEL, 0.3), ("smollm2:1.7b", 0.2), ("llama3.2:1b", 0.1))
MIX_MODELS = tuple(m for m, _ in MIX)


def _mixed(name: str, about: str, idle: float, busy: float, single: float, speeds: dict) -> str:
    lines = [f'name = "{name}"', f'description = "{about}"', "max_parallel = 4",
             "max_queue = 512", "load_gb_per_s = 2.0", "memory_gb = 7.0", "",
             "[power]", f"idle_watts = {idle}", f"busy_watts = {busy}",
             f"single_stream_load = {single}", "", "[speed]",
             "reference_model_bytes = 2019393189", f"decode_tok_s = {speeds[MODEL]}",
             "prompt_tok_s = 4000.0", "max_decode_tok_s = 900.0", "max_prompt_tok_s = 20000.0",
             "concurrency_exponent = 0.6"]
    for model, tok_s in speeds.items():
        lines += ["", f'[speed.models."{model}"]', f"decode_tok_s = {tok_s}"]
    return "\n".join(lines) + "\n" + _COOL


# Decode rates go inversely with the model's bytes, as the simulator's own scaling does.
_SIZES_GB = {"llama3.1:8b": 4.92, MODEL: 2.02, "smollm2:1.7b": 1.82, "llama3.2:1b": 1.32}


def _speeds(at_3b: float) -> dict:
    return {m: round(at_3b * _SIZES_GB[MODEL] / gb, 1) for m, gb in _SIZES_GB.items()}


LEAN = _mixed("lean", "efficient per token, little memory", 8.0, 70.0, 0.45, _speeds(100.0))
HUNGRY = _mixed("hungry", "fast but power-hungry, little memory", 25.0, 400.0, 0.5, _speeds(220.0))

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(
        "thermal", "the efficient node overheats",
        "The demo fleet at light load (2 requests/s, one model). At a third of the run the node "
        "every efficiency policy favours is heated until it throttles: a router must leave it "
        "within a sample or two and come back when it cools.",
        DEMO_NODES,
        Workload(rate=2.0, duration_s=84.0),
        grace_s=24.0,
        heat=Heat("m2-studio", {"temperature_c": 105, "ambient_c": 80}, 1 / 3),
        policies=("top", "top+average", "weighted", "p2c", "slo", "round_robin",
                  "least_connections", "oracle"),
    ),
    Scenario(
        "high-load", "nodes that batch against nodes that do not, under steady load",
        "Two `batcher` nodes (60 tok/s alone at 170 W: 0.35 tok/J; eight streams make 392 tok/s "
        "at 280 W: 1.4 tok/J) beside two `solo` nodes (100 tok/s alone at 74 W: 1.35 tok/J; a "
        "second stream adds 11 tok/s for 88 W). At 5 requests/s the fleet holds about 13 "
        "streams: where they go decides the energy. Scored on one stream, the solo nodes look "
        "four times better; under load the batchers are.",
        (NodeSpec("batcher-a", "batcher", 1.0, 8, (MODEL,)),
         NodeSpec("batcher-b", "batcher", 1.0, 8, (MODEL,)),
         NodeSpec("solo-a", "solo", 1.0, 4, (MODEL,)),
         NodeSpec("solo-b", "solo", 1.0, 4, (MODEL,))),
        Workload(rate=5.0, duration_s=60.0),
        grace_s=20.0,
        beat_least_connections=1.3,
        profiles=(("batcher", BATCHER), ("solo", SOLO)),
    ),
    Scenario(
        "multi-model", "four models, memory for two or three",
        "Four nodes, each holding four models (1.3 to 4.9 GB) on disk but 7 GB of memory: a "
        "cold model loads at 2 GB/s at the node's one-stream power, and evicts the idle model "
        "due to expire soonest when it does not fit (Ollama's default keep_alive of 5 minutes). "
        "Two `lean` nodes are efficient per token, two `hungry` ones fast but power-hungry. "
        "Requests ask for the four models in a 40/30/20/10 mix at 3 requests/s. The reporters "
        "send what `/api/ps` lists and the node's memory.",
        (NodeSpec("lean-a", "lean", 1.0, 4, MIX_MODELS, 7.0),
         NodeSpec("lean-b", "lean", 1.0, 4, MIX_MODELS, 7.0),
         NodeSpec("hungry-a", "hungry", 1.0, 4, MIX_MODELS, 7.0),
         NodeSpec("hungry-b", "hungry", 1.0, 4, MIX_MODELS, 7.0)),
        Workload(rate=3.0, duration_s=60.0, models=MIX),
        grace_s=20.0,
        beat_least_connections=1.3,
        profiles=(("lean", LEAN), ("hungry", HUNGRY)),
    ),
    Scenario(
        "bursts", "waves of simultaneous requests",
        "The demo fleet, hit every 6 s by a wave of 12 requests sent at once (2 requests/s on "
        "average): each wave is decided between two rankings, on the curves the proxy has.",
        DEMO_NODES,
        Workload(rate=2.0, duration_s=60.0, burst_every_s=6.0, burst_size=12),
        grace_s=20.0,
    ),
)}
