"""One measured run: the fixed workload against a fresh fleet, through the proxy (a policy) or
routed by the oracle, with one induced thermal event, while every node's ground truth is
sampled. Returns raw records; `metrics.py` turns them into numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import aiohttp

import fleet as fleet_mod
from fleet import Fleet
from oracle import Memory, NodeModel, Oracle
from scenarios import Heat
from workload import Request

STATE_EVERY_S = 0.2
RANKING_EVERY_S = 1.0
CUT = "still open at the end of the window"
QUEUE_TIMEOUT_S = 10.0  # the proxy's default routing.queue_timeout; the oracle waits as long


@dataclasses.dataclass
class Outcome:
    index: int
    sent_s: float
    node: str | None = None
    status: int | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    # Tokens the client received (one per streamed chunk, as the simulator sends them), so an
    # answer cut at the end of the window still counts what it delivered.
    tokens: int = 0
    # The final chunk's eval_count (only for answers that finished).
    eval_count: int | None = None
    error: str | None = None
    # The node's ground-truth thermal state when the request was sent (newest 200 ms sample).
    node_state: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclasses.dataclass
class RunData:
    policy: str
    window_s: float
    heat_at_s: float | None
    outcomes: list[Outcome]
    # node -> [(t, state json)], every STATE_EVERY_S
    samples: dict[str, list[tuple[float, dict]]]
    energy_start: dict[str, float]
    energy_end: dict[str, float]
    # [(t, {node: ranking entry})] from the proxy's /ranking (empty for the oracle)
    rankings: list[tuple[float, dict]]


async def _stream_generate(session: aiohttp.ClientSession, url: str, req: Request,
                           out: Outcome, start: float) -> None:
    body = {"model": req.model, "prompt": req.prompt, "stream": True,
            "options": {"num_predict": req.num_predict}}
    async with session.post(f"{url}/api/generate", json=body) as resp:
        out.status = resp.status
        out.node = resp.headers.get("X-WES-Node", out.node)
        async for raw in resp.content:
            line = raw.strip()
            if not line:
                continue
            try:
                chunk = json.loads(line)
            except ValueError:
                continue
            if chunk.get("error") and out.error is None:
                out.error = str(chunk["error"])
            if chunk.get("response"):
                out.tokens += 1
                if out.ttft_s is None:
                    out.ttft_s = time.monotonic() - start
            if chunk.get("done"):
                out.eval_count = chunk.get("eval_count")
        if resp.status != 200 and out.error is None:
            out.error = f"HTTP {resp.status}"


async def _guarded(session: aiohttp.ClientSession, url: str, req: Request, out: Outcome,
                   start: float) -> None:
    """One request; a transport error is recorded on the outcome, not raised."""
    try:
        await _stream_generate(session, url, req, out, start)
    except asyncio.CancelledError:
        out.error = out.error or CUT
        raise
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        out.total_s = time.monotonic() - start


async def measure(fleet: Fleet, policy: str, schedule: list[Request], arrivals_s: float,
                  grace_s: float, heat: Heat | None) -> RunData:
    """Runs the schedule; the measured window is [0, arrivals_s + grace_s] from the first
    state reading. Requests still open at its end are cut and count as failed."""
    window = arrivals_s + grace_s
    use_oracle = policy == "oracle"
    nodes = fleet_mod.NODES
    samples: dict[str, list] = {n.id: [] for n in nodes}
    latest: dict[str, dict] = {}
    rankings: list = []
    outcomes: list[Outcome] = []
    in_flight = {n.id: 0 for n in nodes}
    slot_freed = asyncio.Condition()
    oracle = Oracle(
        {n.id: {m: NodeModel(n, fleet.profiles[n.id], m) for m in n.models} for n in nodes},
        {n.id: Memory(fleet.profiles[n.id].get("load_gb_per_s", 0.0),
                      int(fleet.profiles[n.id].get("memory_gb", 0.0) * 1e9),
                      fleet.model_sizes[n.id]) for n in nodes})
    # Models the oracle sent a request for since the newest state reading: loading there.
    sent_since: dict[str, set[str]] = {n.id: set() for n in nodes}

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as probe:

        async def read_states() -> dict[str, dict]:
            async def one(node_id):
                async with probe.get(f"{fleet.node_urls[node_id]}/wes-sim/state") as r:
                    return node_id, await r.json()
            return dict(await asyncio.gather(*(one(n.id) for n in nodes)))

        first = await read_states()
        start = time.monotonic()
        now = lambda: time.monotonic() - start  # noqa: E731
        energy_start = {k: v["energy_joules"] for k, v in first.items()}
        latest.update(first)
        for k, v in first.items():
            samples[k].append((0.0, v))

        async def poll_states():
            while True:
                await asyncio.sleep(STATE_EVERY_S)
                try:
                    got = await read_states()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    continue
                t = now()
                latest.update(got)
                for k in got:
                    sent_since[k].clear()
                for k, v in got.items():
                    samples[k].append((t, v))

        async def poll_ranking():
            while True:
                try:
                    async with probe.get(f"{fleet.admin}/ranking?model={nodes[0].models[0]}") as r:
                        body = await r.json()
                    rankings.append((now(), {n["id"]: n for n in body["nodes"]}))
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                    pass
                await asyncio.sleep(RANKING_EVERY_S)

        heat_at = None

        async def heat_event():
            nonlocal heat_at
            await asyncio.sleep(max(0.0, heat.at_fraction * arrivals_s - now()))
            async with probe.post(f"{fleet.node_urls[heat.node]}/wes-sim/heat", json=heat.body) as r:
                r.raise_for_status()
            heat_at = now()

        async def one_request(req: Request):
            out = Outcome(req.index, now())
            outcomes.append(out)
            t_start = time.monotonic()
            states_at_send = {k: v["thermal_state"] for k, v in latest.items()}
            if not use_oracle:
                await _guarded(session, fleet.api, req, out, t_start)
                out.node_state = states_at_send.get(out.node) if out.node else None
                return
            # The oracle: wait (bounded, as the proxy's queue) for an allowed node with room.
            node = None
            async with slot_freed:
                deadline = t_start + QUEUE_TIMEOUT_S
                while True:
                    states = {k: v["thermal_state"] for k, v in latest.items()}
                    loaded = {k: set(v.get("loaded", [])) | sent_since[k]
                              for k, v in latest.items()}
                    node = oracle.pick(req.model, req.num_predict, in_flight, states, loaded)
                    if node is not None:
                        in_flight[node] += 1
                        sent_since[node].add(req.model)
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        # Also wake every state sample: a node may have left Critical.
                        await asyncio.wait_for(slot_freed.wait(), min(left, STATE_EVERY_S))
                    except asyncio.TimeoutError:
                        pass
            if node is None:
                out.status, out.error = 503, "oracle: every allowed node full (queue timeout)"
                out.total_s = time.monotonic() - t_start
                return
            out.node = node
            out.node_state = states_at_send[node]
            try:
                await _guarded(session, fleet.node_urls[node], req, out, t_start)
            finally:
                async with slot_freed:
                    in_flight[node] -= 1
                    slot_freed.notify_all()

        background = [asyncio.create_task(poll_states())]
        if not use_oracle:
            background.append(asyncio.create_task(poll_ranking()))
        if heat:
            background.append(asyncio.create_task(heat_event()))
        tasks = []

        async def arrivals():
            for req in schedule:
                await asyncio.sleep(max(0.0, req.at_s - now()))
                tasks.append(asyncio.create_task(one_request(req)))

        async def run_all():
            await arrivals()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            await asyncio.wait_for(run_all(), timeout=window)
        except asyncio.TimeoutError:
            pass
        # The window is fixed: wait out what is left of it, so every run's energy covers the
        # same span; cut whatever is still open.
        await asyncio.sleep(max(0.0, window - now()))
        last = await read_states()
        end = now()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for o in outcomes:
            if o.total_s is None:
                o.error = o.error or CUT
            elif o.status is None and o.error is None:
                o.error = "no response"
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    for k, v in last.items():
        samples[k].append((end, v))
    return RunData(policy, end, heat_at, sorted(outcomes, key=lambda o: o.index), samples,
                   energy_start, {k: v["energy_joules"] for k, v in last.items()}, rankings)
