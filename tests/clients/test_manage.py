"""Fleet model management through the official `ollama` client: pull with one merged progress
bar, a node failing its pull, a node dying mid-pull, copy, delete, push, create from an
uploaded blob (streamed to every node, the proxy's memory bounded), placement by header, and
the fleet view following at once (the reporters poll their model list only hourly here, so
only the proxy's refresh request can make a pulled model routable in seconds)."""

import hashlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import get_json, start_fleet

ADMIN_TOKEN = "adm-manage-1"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG = f'\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
NODES = (("a", "rtx-4090"), ("b", "rtx-4090"), ("c", "ryzen-cpu"))
# qwen2.5:0.5b: 397,821,319 bytes of weights.
PULLED = "qwen2.5:0.5b"


def managed_fleet(prefix):
    return start_fleet(Path(tempfile.mkdtemp(prefix=prefix)), CONFIG, nodes=NODES,
                       reporter_args=("--models-interval", "1h"))


@pytest.fixture(scope="module")
def fleet3():
    f = managed_fleet("wes-manage-")
    try:
        yield f
    finally:
        f.close()


def admin_client(f, **headers):
    return ollama.Client(host=f.api, headers={**ADMIN, **headers})


def sim_settings(f, node, **settings):
    r = httpx.post(f"http://{f.nodes[node]}/wes-sim/management", json=settings)
    assert r.status_code == 200, r.text


def sim_models(f, node):
    return {m["name"] for m in get_json(f"http://{f.nodes[node]}/api/tags")["models"]}


def wait_routable(f, model, limit=5.0):
    """Seconds until a generate for `model` through the proxy succeeds; fails past `limit`."""
    start = time.monotonic()
    while True:
        r = httpx.post(f"{f.api}/api/generate", timeout=10,
                       json={"model": model, "prompt": "hi", "stream": False,
                             "options": {"num_predict": 2}})
        if r.status_code == 200:
            return time.monotonic() - start
        assert time.monotonic() - start < limit, f"{model} not routable after {limit}s: {r.text}"
        time.sleep(0.05)


def wait_unrouted(f, model, limit=5.0):
    start = time.monotonic()
    while True:
        r = httpx.post(f"{f.api}/api/generate", timeout=10,
                       json={"model": model, "prompt": "hi", "stream": False})
        if r.status_code == 404:
            return
        assert time.monotonic() - start < limit, f"{model} still routed after {limit}s"
        time.sleep(0.05)


def reset(f):
    for node in f.nodes:
        sim_settings(f, node)


def test_pull_reaches_every_node_behind_one_progress_bar(fleet3):
    reset(fleet3)
    for node in fleet3.nodes:
        sim_settings(fleet3, node, pull_bytes_per_sec=800_000_000)
    parts = list(admin_client(fleet3).pull(PULLED, stream=True))
    assert parts[-1].status == "success"
    by_digest = {}
    for p in parts:
        if p.digest:
            by_digest.setdefault(p.digest, []).append((p.total, p.completed))
    weights = max(by_digest.values(), key=lambda v: v[-1][0])
    # One bar for the weights: three nodes' bytes, completed rising to the total.
    assert weights[-1] == (3 * 397_821_319, 3 * 397_821_319), weights[-1]
    completed = [c for _, c in weights]
    assert completed == sorted(completed) and len(completed) > 3, completed
    statuses = [p.status for p in parts if not p.digest]
    assert statuses.count("pulling manifest") == 1, statuses
    for node in fleet3.nodes:
        assert PULLED in sim_models(fleet3, node)
    took = wait_routable(fleet3, PULLED)
    print(f"pulled {PULLED} routable {took:.2f}s after the pull ended")


def test_a_node_failing_its_pull_is_named_and_the_others_keep_the_model(fleet3):
    reset(fleet3)
    sim_settings(fleet3, "b", fail_pulls="pull model manifest: file does not exist")
    with pytest.raises(ollama.ResponseError) as e:
        for _ in admin_client(fleet3).pull("gemma3:1b", stream=True):
            pass
    message = e.value.error
    assert "b: pull model manifest: file does not exist" in message, message
    assert "succeeded on a, c" in message, message
    assert "gemma3:1b" in sim_models(fleet3, "a") and "gemma3:1b" not in sim_models(fleet3, "b")
    # Not streamed: one object, the failed node's status.
    with pytest.raises(ollama.ResponseError) as e:
        admin_client(fleet3).pull("gemma3:4b", stream=False)
    assert e.value.status_code == 500 and "b:" in e.value.error
    reset(fleet3)


def test_placement_by_header_and_unknown_nodes_refused(fleet3):
    reset(fleet3)
    done = admin_client(fleet3, **{"X-WES-Nodes": "c"}).pull("mistral:7b", stream=False)
    assert done.status == "success"
    assert "mistral:7b" in sim_models(fleet3, "c")
    assert "mistral:7b" not in sim_models(fleet3, "a") | sim_models(fleet3, "b")
    with pytest.raises(ollama.ResponseError) as e:
        admin_client(fleet3, **{"X-WES-Nodes": "a,nope,zz"}).pull("mistral:7b")
    assert e.value.status_code == 400 and "nope, zz" in e.value.error


def test_copy_and_delete_reach_the_nodes_holding_the_model(fleet3):
    reset(fleet3)
    client = admin_client(fleet3)
    assert client.copy("llama3.2:3b", "team/llama:prod").status == "success"
    for node in fleet3.nodes:
        assert "team/llama:prod" in sim_models(fleet3, node)
    wait_routable(fleet3, "team/llama:prod")
    assert client.delete("team/llama:prod").status == "success"
    for node in fleet3.nodes:
        assert "team/llama:prod" not in sim_models(fleet3, node)
    wait_unrouted(fleet3, "team/llama:prod")
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("team/llama:prod")
    assert e.value.status_code == 404 and "not found" in e.value.error


def test_push_goes_to_one_node_holding_the_model(fleet3):
    reset(fleet3)
    parts = list(admin_client(fleet3).push("llama3.2:3b", stream=True))
    assert parts[-1].status == "success"
    assert any(p.status.startswith("pushing") and p.digest for p in parts)
    r = httpx.post(f"{fleet3.api}/api/push", headers=ADMIN,
                   json={"model": "llama3.2:3b", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert len(r.headers["x-wes-nodes"].split(",")) == 1


def rss_peak_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_create_from_a_blob_streamed_to_every_node(fleet3, tmp_path):
    reset(fleet3)
    # Far beyond Pingora's 64 KiB retry buffer; one node reads it slowly.
    size = 96 * 1024 * 1024
    blob = tmp_path / "model.gguf"
    with open(blob, "wb") as out:
        chunk = os.urandom(1024 * 1024)
        for i in range(size // len(chunk)):
            out.write(hashlib.sha256(chunk + i.to_bytes(4, "big")).digest() * (len(chunk) // 32))
    sim_settings(fleet3, "c", blob_bytes_per_sec=48 * 1024 * 1024)
    proxy = next(p for p in fleet3.procs if "wes-proxy" in str(p.args[0]))
    before = rss_peak_kib(proxy.pid)
    client = admin_client(fleet3)
    digest = client.create_blob(blob)
    grew_mib = (rss_peak_kib(proxy.pid) - before) / 1024
    print(f"{size >> 20} MiB blob to three nodes: the proxy's peak RSS grew {grew_mib:.1f} MiB")
    assert grew_mib < 32, f"the proxy held the blob: its peak RSS grew {grew_mib:.1f} MiB"
    # Byte-identical on every node: each checked the SHA-256 of what it received.
    for node in fleet3.nodes:
        assert httpx.head(f"http://{fleet3.nodes[node]}/api/blobs/{digest}").status_code == 200
    assert httpx.head(f"{fleet3.api}/api/blobs/{digest}", headers=ADMIN).status_code == 200
    missing = "sha256:" + "0" * 64
    assert httpx.head(f"{fleet3.api}/api/blobs/{missing}", headers=ADMIN).status_code == 404
    # A body that is not the digest it names is refused by every node, and said so.
    r = httpx.post(f"{fleet3.api}/api/blobs/{missing}", headers=ADMIN, content=b"not it")
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"], r.text
    done = client.create("custom:v1", files={"model.gguf": digest}, stream=False)
    assert done.status == "success"
    for node in fleet3.nodes:
        assert "custom:v1" in sim_models(fleet3, node)
    wait_routable(fleet3, "custom:v1")
    # From a model the nodes hold, with a system prompt.
    done = client.create("llama-brief", from_="llama3.2:3b", system="Be brief.", stream=False)
    assert done.status == "success"
    for node in fleet3.nodes:
        assert "llama-brief:latest" in sim_models(fleet3, node) or "llama-brief" in sim_models(fleet3, node)
    # Without its blob, create fails on every node, with the node's words.
    with pytest.raises(ollama.ResponseError) as e:
        client.create("broken", files={"x.gguf": missing})
    assert e.value.status_code == 400 and "not found" in e.value.error


def test_management_needs_the_admin_token(fleet3, monkeypatch):
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=fleet3.api).pull(PULLED)
    assert e.value.status_code == 401
    # The client sends OLLAMA_API_KEY as the bearer token: the way README shows.
    monkeypatch.setenv("OLLAMA_API_KEY", ADMIN_TOKEN)
    assert ollama.Client(host=fleet3.api).pull(PULLED).status == "success"
    r = httpx.post(f"{fleet3.api}/api/blobs/sha256:{'1' * 64}", content=b"x")
    assert r.status_code == 401


def test_a_node_that_dies_mid_pull_fails_only_its_part():
    f = managed_fleet("wes-manage-death-")
    try:
        for node in f.nodes:
            # Two GB of weights at 400 MB/s: five seconds to die in.
            sim_settings(f, node, pull_bytes_per_sec=400_000_000)
        parts, errors = [], []

        def pull():
            try:
                for p in admin_client(f).pull("llama3.1:8b", stream=True):
                    parts.append(p)
            except ollama.ResponseError as e:
                errors.append(e)

        t = threading.Thread(target=pull)
        t.start()
        deadline = time.monotonic() + 20
        while not any(p.completed for p in parts):
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        f.sims["c"].send_signal(signal.SIGKILL)
        t.join(timeout=60)
        assert not t.is_alive()
        assert errors, f"the pull did not fail: {parts[-3:]}"
        message = errors[0].error
        assert "on 1 of 3 nodes" in message and "c:" in message, message
        assert "succeeded on a, b" in message, message
        # The client heard of it when it happened, before the end.
        assert any((p.status or "").startswith("node c failed") for p in parts), parts[-3:]
        for node in ("a", "b"):
            assert "llama3.1:8b" in sim_models(f, node)
    finally:
        f.close()
