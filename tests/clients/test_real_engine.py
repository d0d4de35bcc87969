"""A real inference engine behind the proxy: llama.cpp's llama-server with SmolLM2-135M.

The proxy's own decode rate, measured on the stream it relays, must agree with the engine's
`timings.predicted_per_second` within 10%; with four streams at once on a server with four
slots, the node's throughput on `/ranking` must be within 5% of the sum of the four streams'
rates the engine reports. scripts/test.sh builds the engine (once, cached) and
sets LLAMA_SERVER and SMOLLM2; run by hand, the test fails with a message saying so."""

import json
import os
import subprocess
import time
import urllib.request

import openai
import pytest

from conftest import BIN, Fleet, free_port, get_json, read_line_with

MODEL = "smollm2:135m"


def start_engine_fleet(tmp, extra_args=(), max_concurrency=4):
    server, model = os.environ.get("LLAMA_SERVER"), os.environ.get("SMOLLM2")
    assert server and model, "set LLAMA_SERVER and SMOLLM2 (scripts/real-engine.sh prints them)"
    f = Fleet(tmp)
    try:
        port = free_port()
        f.spawn("llama-server", [server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                                 "-c", "2048", "-t", "2", "--alias", MODEL, *extra_args],
                stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp / "llama-server.log").read_text()
            time.sleep(0.2)
        api_port = free_port()
        config = tmp / "proxy.toml"
        config.write_text(
            f'[listen]\napi = "127.0.0.1:{api_port}"\ntelemetry = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            f'[[nodes]]\nid = "llama"\nurl = "http://127.0.0.1:{port}"\ntoken = "tok-llama"\n'
            f'max_concurrency = {max_concurrency}\n'
        )
        proxy, log = f.spawn("proxy", [str(BIN / "wes-proxy"), "--config", str(config)])
        telemetry = read_line_with(proxy, "telemetry listening on", log).rsplit(" ", 1)[1]
        admin = read_line_with(proxy, "admin listening on", log).rsplit(" ", 1)[1]
        f.spawn("reporter", [str(BIN / "wes-reporter"), "--node-id", "llama", "--token", "tok-llama",
                             "--proxy", f"http://{telemetry}", "--interval", "500ms",
                             "--sensor", "command", "--sensor-command",
                             'echo \'{"watts": 15.0, "thermal_state": "Normal"}\'',
                             "--ollama", f"http://127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            node = get_json(f"http://{admin}/ranking")["nodes"][0]
            if node["healthy"] and MODEL in (node["models"] or []):
                break
            assert time.monotonic() < deadline, node
            time.sleep(0.1)
        f.api = f"http://127.0.0.1:{api_port}"
        f.admin = f"http://{admin}"
        f.engine = f"http://127.0.0.1:{port}"
        return f
    except BaseException:
        f.close()
        raise


@pytest.fixture(scope="module")
def engine_fleet(tmp_path_factory):
    f = start_engine_fleet(tmp_path_factory.mktemp("engine"))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def parallel_engine_fleet(tmp_path_factory):
    # Four slots sharing the 2048-token context: 512 each, room for the prompt and 96 tokens.
    f = start_engine_fleet(tmp_path_factory.mktemp("engine-parallel"), ["--parallel", "4"])
    try:
        yield f
    finally:
        f.close()


def test_streamed_chat_rate_matches_the_engine(engine_fleet):
    client = openai.OpenAI(base_url=f"{engine_fleet.api}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
        max_tokens=128,
        temperature=0,
        stream=True,
    )
    text, timings = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        extra = getattr(chunk, "model_extra", None) or {}
        timings = extra.get("timings", timings)
    assert text
    assert timings and timings["predicted_n"] >= 32, timings
    engine_rate = timings["predicted_per_second"]

    deadline = time.monotonic() + 10
    while True:
        node = get_json(f"{engine_fleet.admin}/ranking?model={MODEL}")["nodes"][0]
        if node["tok_s_source"] == "relayed":
            break
        assert time.monotonic() < deadline, node
        time.sleep(0.05)
    measured = node["tok_s"]
    print(f"proxy measured {measured:.3f} tok/s; engine timings.predicted_per_second {engine_rate:.3f}")
    assert abs(measured - engine_rate) / engine_rate <= 0.10, (
        f"proxy measured {measured:.1f} tok/s, engine says {engine_rate:.1f}: {json.dumps(node)}"
    )
    # With a rate and watts the node now has a score: tok/s per watt.
    assert node["raw_wes"] == pytest.approx(measured / 15.0)
    # llama-server has no /api/ps: the reporter reads /v1/models, where a server of one model
    # has it loaded for good, with its file's size.
    loaded = node["loaded_models"]
    assert [m["name"] for m in loaded] == [MODEL], node
    assert loaded[0]["size_bytes"] > 0 and loaded[0]["expires_unix_ms"] is None, node


def stream_rate(api, prompt, max_tokens):
    """One streamed chat through the proxy; the engine's own predicted_per_second for it."""
    client = openai.OpenAI(base_url=f"{api}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    timings = None
    for chunk in stream:
        extra = getattr(chunk, "model_extra", None) or {}
        timings = extra.get("timings", timings)
    assert timings and timings["predicted_n"] >= 32, timings
    return timings["predicted_per_second"]


def test_throughput_of_four_streams_matches_the_engine(parallel_engine_fleet):
    from concurrent.futures import ThreadPoolExecutor

    f = parallel_engine_fleet
    prompts = [f"Write a short story about lighthouse keeper number {i}." for i in range(4)]

    def wave():
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda p: stream_rate(f.api, p, 96), prompts))

    # The first wave teaches the proxy the node's curve at four in flight.
    rates = wave()
    engine_total = sum(rates)
    # The second wave: /ranking scored while four are in flight shows the throughput there
    # (`in_flight` is live; the figures are at `scored_in_flight`, the last rebuild's load).
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(wave)
        seen = None
        deadline = time.monotonic() + 60
        while not second.done() and time.monotonic() < deadline:
            node = get_json(f"{f.admin}/ranking?model={MODEL}")["nodes"][0]
            if node["scored_in_flight"] == 4:
                seen = node
                break
            time.sleep(0.02)
        second_rates = second.result()
    assert seen, "never saw the ranking scored at four in flight"
    measured, single = seen["tok_s"], seen["tok_s_single"]
    print(f"engine: four streams at {[round(r, 1) for r in rates]} tok/s, {engine_total:.1f} in all "
          f"(second wave {sum(second_rates):.1f}); proxy: {measured:.1f} at four in flight, "
          f"{single:.1f} for one stream")
    assert abs(measured - engine_total) / engine_total <= 0.05, (
        f"proxy shows {measured:.1f} tok/s at four in flight, the engine made {engine_total:.1f}: "
        f"{json.dumps(seen)}"
    )
    assert measured > single


def test_requests_sent_around_the_proxy_count_as_load(parallel_engine_fleet):
    """llama.cpp's `/slots` says what the engine is working on: two requests sent straight to
    it, past the proxy, show in the node's load (`fleet_in_flight`) though the proxy has none
    of its own there, and count against its `max_concurrency`."""
    import threading

    import httpx

    f = parallel_engine_fleet

    def direct():
        httpx.post(f"{f.engine}/v1/completions", timeout=60,
                   json={"model": MODEL, "prompt": "Write a long story about the sea.",
                         "max_tokens": 400, "temperature": 0, "ignore_eos": True})

    threads = [threading.Thread(target=direct) for _ in range(2)]
    for t in threads:
        t.start()
    seen, deadline = None, time.monotonic() + 15
    while seen is None and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        node = get_json(f"{f.admin}/ranking")["nodes"][0]
        if node["in_flight"] == 0 and node["fleet_in_flight"] >= 2:
            seen = node
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=60)
    assert seen, "the engine's own load never reached the proxy"

