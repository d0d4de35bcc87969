"""The energy ledger against a simulated node's ground truth: the simulator splits its own
energy counter among the requests decoding, physics step by physics step, and says each
request's share in its final answer (`wes_sim_energy_joules`); the proxy splits the energy its
reporter measured, sample by sample, from what it relays. One request alone, then overlapping
requests of different lengths, each under its own key so that `/usage` tells them apart."""

import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from conftest import BIN, get_json, read_line_with, start_fleet

KEYS = {f"r{i}": f"sk-ledger-{i}" for i in range(5)}
CONFIG = "".join(f'\n[[keys]]\nid = "{k}"\nkey = "{v}"\n' for k, v in KEYS.items())
# 36 J a day: one answer overdraws it.
KEYS["frugal"] = "sk-ledger-frugal"
CONFIG += '\n[[keys]]\nid = "frugal"\nkey = "sk-ledger-frugal"\nenergy_wh_per_day = 0.01\n'
CONFIG += '\n[usage]\nlog = "usage.jsonl"\n'


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    f = start_fleet(Path(tempfile.mkdtemp(prefix="wes-ledger-")), CONFIG,
                    nodes=(("gpu", "rtx-4090"),))
    try:
        yield f
    finally:
        f.close()


def generate(fleet, key_id, tokens):
    """Streams one generation; returns the simulator's truth for its energy."""
    body = {"model": "llama3.2:3b", "prompt": "Tell me about the sea.",
            "options": {"num_predict": tokens}}
    headers = {"Authorization": f"Bearer {KEYS[key_id]}"}
    last = None
    with httpx.stream("POST", f"{fleet.api}/api/generate", json=body, headers=headers,
                      timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
    assert last["done"] and last["eval_count"] == tokens
    return last["wes_sim_energy_joules"]


def usage_of(fleet, key_ids, timeout=15.0):
    """The ledger's rows for `key_ids`, once each has settled (at the node's next sample)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {k["id"]: k for k in get_json(f"{fleet.admin}/usage")["keys"]}
        if all(rows.get(k, {}).get("requests") == 1 for k in key_ids):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout}s: {rows}")
        time.sleep(0.1)


def node_energy(fleet):
    """(the simulator's counter, the ledger's measured, idle and requests' energy, corrected
    to the same instant: the proxy's figures stop at its last sample, so the counter is taken
    back by the idle power over that sample's age)."""
    state = get_json(f"http://{fleet.nodes['gpu']}/wes-sim/state")
    ranking = get_json(f"{fleet.admin}/ranking")["nodes"][0]
    usage = get_json(f"{fleet.admin}/usage")["nodes"]
    node = usage[0] if usage else {"measured_energy_joules": 0.0, "idle_energy_joules": 0.0,
                                    "energy_joules": 0.0}
    counter = state["energy_joules"] - state["idle_watts"] * ranking["last_sample_age_ms"] / 1000
    return counter, node


def wait_idle(fleet):
    deadline = time.monotonic() + 10
    while get_json(f"http://{fleet.nodes['gpu']}/wes-sim/state")["in_flight"] > 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def within(measured, truth, share):
    return abs(measured - truth) <= share * truth


def test_one_request_alone(one_node):
    wait_idle(one_node)
    truth = generate(one_node, "r0", 80)
    row = usage_of(one_node, ["r0"])["r0"]
    print(f"alone: ledger {row['energy_joules']:.2f} J, truth {truth:.2f} J")
    assert row["output_tokens"] == 80
    assert within(row["energy_joules"], truth, 0.10), (row, truth)
    assert row["energy_wh"] == pytest.approx(row["energy_joules"] / 3600)
    assert 0 < row["joules_per_token_net"] < row["joules_per_token"]


def test_overlapping_requests_of_different_lengths(one_node):
    wait_idle(one_node)
    counter0, node0 = node_energy(one_node)
    lengths = {"r1": 100, "r2": 250, "r3": 500, "r4": 800}
    truths = {}
    threads = []
    for i, (key, tokens) in enumerate(lengths.items()):
        t = threading.Thread(target=lambda k=key, n=tokens: truths.__setitem__(k, generate(one_node, k, n)))
        threads.append(t)
        t.start()
        time.sleep(0.15 * (i % 2))  # not all in the same instant
    for t in threads:
        t.join(timeout=60)
    rows = usage_of(one_node, list(lengths))
    for key, truth in truths.items():
        print(f"{key}: ledger {rows[key]['energy_joules']:.2f} J, truth {truth:.2f} J")
        assert within(rows[key]["energy_joules"], truth, 0.10), (key, rows[key], truth)
    # Longer answers drew more, and the shares are not an even split.
    assert rows["r4"]["energy_joules"] > 3 * rows["r1"]["energy_joules"]
    wait_idle(one_node)
    time.sleep(1.2)  # two more samples: the last interval is in
    counter1, node1 = node_energy(one_node)
    increase = counter1 - counter0
    booked = (node1["energy_joules"] - node0["energy_joules"]) + (
        node1["idle_energy_joules"] - node0["idle_energy_joules"])
    print(f"booked {booked:.2f} J, counter increase {increase:.2f} J")
    assert within(booked, increase, 0.02), (booked, increase)
    assert booked == pytest.approx(node1["measured_energy_joules"] - node0["measured_energy_joules"], rel=1e-9)


def test_energy_per_day_limit(one_node):
    generate(one_node, "frugal", 40)
    usage_of(one_node, ["frugal"])
    r = httpx.post(f"{one_node.api}/api/generate",
                   headers={"Authorization": f"Bearer {KEYS['frugal']}"},
                   json={"model": "llama3.2:3b", "prompt": "x", "stream": False})
    assert r.status_code == 429
    assert "energy_wh_per_day" in r.json()["error"]
    # Overdrawn by tens of joules at 36 J a day: hours away.
    assert int(r.headers["retry-after"]) > 3600
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=one_node.api, headers={"Authorization": f"Bearer {KEYS['frugal']}"}).chat(
            model="llama3.2:3b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429 and "energy_wh_per_day" in e.value.error
    client = openai.OpenAI(base_url=f"{one_node.api}/v1", api_key=KEYS["frugal"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="llama3.2:3b", messages=[{"role": "user", "content": "x"}])
    assert int(e.value.response.headers["retry-after"]) > 3600


def test_usage_windows_and_metrics(one_node):
    usage_of(one_node, ["r0"])
    # Windows are whole minutes: the last hour holds everything, a later start nothing.
    assert len(get_json(f"{one_node.admin}/usage?since=1h")["keys"]) == 6
    assert get_json(f"{one_node.admin}/usage?since=2099-01-01T00:00:00Z")["keys"] == []
    models = get_json(f"{one_node.admin}/usage")["models"]
    assert [m["id"] for m in models] == ["llama3.2:3b"]
    bad = httpx.get(f"{one_node.admin}/usage?since=yesterday")
    assert bad.status_code == 400 and "RFC 3339" in bad.json()["error"]
    metrics = httpx.get(f"{one_node.admin}/metrics").text
    assert 'wes_usage_energy_joules_total{key="r0",model="llama3.2:3b",node="gpu"}' in metrics
    ranking = get_json(f"{one_node.admin}/ranking")["nodes"][0]
    assert ranking["measured_joules_per_token"] > 0


def test_the_usage_log_survives_a_restart(one_node):
    before = get_json(f"{one_node.admin}/usage")
    assert before["log"].endswith("usage.jsonl")
    proxy = next(p for p in one_node.procs if "wes-proxy" in p.args[0])
    proxy.terminate()
    proxy.wait(timeout=15)
    again, log = one_node.spawn("proxy-again", [str(BIN / "wes-proxy"), "--config", str(one_node.config)])
    admin = read_line_with(again, "admin listening on", log).rsplit(" ", 1)[1]
    after = get_json(f"http://{admin}/usage")
    # The same rows; sums of floats in another order may differ in their last bits.
    for kind in ("keys", "models"):
        assert [r["id"] for r in after[kind]] == [r["id"] for r in before[kind]]
        for a, b in zip(after[kind], before[kind]):
            for field in ("requests", "input_tokens", "output_tokens"):
                assert a[field] == b[field], (kind, a, b)
            assert a["energy_joules"] == pytest.approx(b["energy_joules"], rel=1e-9)
    # Node rows agree on requests; their idle energy is logged a minute at a time, the last
    # minute at shutdown.
    for a, b in zip(after["nodes"], before["nodes"]):
        assert a["energy_joules"] == pytest.approx(b["energy_joules"])
        assert a["idle_energy_joules"] >= b["idle_energy_joules"] * 0.999
