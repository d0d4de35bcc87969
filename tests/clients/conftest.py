"""A real fleet for client tests: wes-sim-node nodes, wes-reporter with the command sensor
reading each node's simulated power, and wes-proxy in front. Ports are free ports; every wait
is bounded; every child process is killed at the end."""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("WES_BIN_DIR", ROOT / "target" / "debug"))
MODELS = ["llama3.2:3b", "smollm2:135m", "nomic-embed-text"]


def free_port() -> int:
    """A port free now, below Linux's ephemeral range (32768 and up): a port from that range
    can be taken, between this check and the bind, as the source port of any outgoing
    connection on the machine, and a process restarted on its old port races every one."""
    import random
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def free_ports(n: int) -> list:
    """`n` distinct free ports."""
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def read_line_with(proc, needle: str, log: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        if needle in line:
            return line.strip()
    raise RuntimeError(f"{needle!r} not printed; log:\n{log.read_text() if log.exists() else ''}")


def get_json(url: str, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)


class Fleet:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = []

    def spawn(self, name, args, stdout=subprocess.PIPE):
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            args, stdout=stdout, stderr=open(log, "w"), text=True, stdin=subprocess.DEVNULL
        )
        self.procs.append(proc)
        return proc, log

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_fleet(tmp: Path, extra_config: str = "", admin_headers=None,
                nodes=(("gpu", "rtx-4090"), ("cpu", "ryzen-cpu")), reporter_args=()) -> Fleet:
    """Simulated nodes (id, profile) with their reporters behind one proxy, ranked and ready.
    The caller closes it. `extra_config` is appended to the proxy's TOML (keys, an [admin]
    table); `reporter_args` to each reporter's command line."""
    for b in ("wes-proxy", "wes-reporter", "wes-sim-node"):
        assert (BIN / b).exists(), f"{BIN / b} missing: run cargo build --workspace --bins"
    f = Fleet(tmp)
    try:
        profiles, nodes = nodes, []
        for node_id, profile in profiles:
            proc, log = f.spawn(
                f"sim-{node_id}",
                [str(BIN / "wes-sim-node"), "--listen", "127.0.0.1:0", "--profile", profile,
                 "--models", ",".join(MODELS)],
            )
            addr = read_line_with(proc, "listening on", log).rsplit(" ", 1)[1]
            nodes.append((node_id, addr))
        f.nodes = dict(nodes)
        f.sims = {node_id: proc for (node_id, _), proc in zip(nodes, f.procs)}
        api_port = free_port()
        config = tmp / "proxy.toml"
        text = (
            f'[listen]\napi = "127.0.0.1:{api_port}"\ntelemetry = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
            '[routing]\npolicy = "top"\nstale_after = "5s"\n'
        )
        for node_id, addr in nodes:
            text += f'[[nodes]]\nid = "{node_id}"\nurl = "http://{addr}"\ntoken = "tok-{node_id}"\n'
        config.write_text(text + extra_config)
        f.config = config
        proxy, log = f.spawn("proxy", [str(BIN / "wes-proxy"), "--config", str(config)])
        f.proxy_log = log
        telemetry = read_line_with(proxy, "telemetry listening on", log).rsplit(" ", 1)[1]
        admin = read_line_with(proxy, "admin listening on", log).rsplit(" ", 1)[1]
        for node_id, addr in nodes:
            f.spawn(
                f"reporter-{node_id}",
                [str(BIN / "wes-reporter"), "--node-id", node_id, "--token", f"tok-{node_id}",
                 "--proxy", f"http://{telemetry}", "--interval", "500ms", "--sensor", "command",
                 "--sensor-command", f"curl -sf http://{addr}/wes-sim/state",
                 "--ollama", f"http://{addr}", "--probe-model", "llama3.2:3b",
                 "--probe-interval", "1h", *reporter_args],
                stdout=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while True:
            ranking = get_json(f"http://{admin}/ranking", admin_headers)
            if all(n["healthy"] and n["models"] and n["tok_s"] for n in ranking["nodes"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fleet not ready: {ranking}")
            time.sleep(0.1)
        f.api = f"http://127.0.0.1:{api_port}"
        f.admin = f"http://{admin}"
        return f
    except BaseException:
        f.close()
        raise


@pytest.fixture(scope="session")
def fleet():
    f = start_fleet(Path(tempfile.mkdtemp(prefix="wes-clients-")))
    try:
        yield f
    finally:
        f.close()
