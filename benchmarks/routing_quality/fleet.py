"""The simulated fleet one benchmark run uses: a `wes-sim-node` per node of the scenario, the
real `wes-proxy` with the policy under test in its TOML, and one real `wes-reporter` per node
whose `command` sensor reads that node's `/wes-sim/state`.

Every run starts a fresh fleet (fresh thermal state, fresh proxy estimates), and `Fleet.stop`
ends every process it started, by pid: SIGTERM, then SIGKILL after a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from scenarios import DEMO_NODES, MODEL, NodeSpec, Scenario  # noqa: F401 (re-exported)

# The scenario being run: `use()` sets it before a run, and every module reads it from here.
NODES: tuple[NodeSpec, ...] = DEMO_NODES
SCENARIO: Scenario | None = None


def use(scenario: Scenario) -> None:
    global NODES, SCENARIO
    NODES, SCENARIO = scenario.nodes, scenario


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_line(path: Path, prefix: str, limit_s: float, proc: subprocess.Popen) -> str:
    """The rest of the first line of `path` that starts with `prefix`, waiting at most limit_s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            for line in path.read_text().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"no '{prefix}' line in {path} (process exit code {proc.poll()})")


def proxy_toml(policy: str, api: str, nodes: list[tuple[NodeSpec, str]], routing_extra: str) -> str:
    lines = [
        "# Written by benchmarks/routing_quality for one benchmark run.",
        "[listen]",
        f'api = "{api}"',
        'telemetry = "127.0.0.1:0"',
        'admin = "127.0.0.1:0"',
        "",
        "[routing]",
        f'policy = "{policy}"',
        'stale_after = "3s"',
        'exclude_thermal = ["Critical"]',
    ]
    if routing_extra:
        lines.append(routing_extra)
    for spec, url in nodes:
        lines += [
            "",
            "[[nodes]]",
            f'id = "{spec.id}"',
            f'url = "{url}"',
            f'token = "bench-{spec.id}"',
            f"pue = {spec.pue}",
            f"max_concurrency = {spec.max_concurrency}",
        ]
    return "\n".join(lines) + "\n"


class Fleet:
    """One fresh fleet. `start()` returns once every node is ranked by the proxy."""

    def __init__(self, bin_dir: Path, policy: str, time_scale: float, routing_extra: str = "",
                 probe_streams: str | None = None, thermal_check: str | None = None):
        self.bin = bin_dir
        self.probe_streams = probe_streams
        self.thermal_check = thermal_check
        self.policy = policy
        self.time_scale = time_scale
        self.routing_extra = routing_extra
        self.work = Path(tempfile.mkdtemp(prefix="wes-routing-quality."))
        self.procs: list[subprocess.Popen] = []
        self.node_urls: dict[str, str] = {}
        self.profiles: dict[str, dict] = {}
        self.model_sizes: dict[str, dict[str, int]] = {}
        self.api = ""
        self.admin = ""

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.work / f"{name}.out", "w")
        err = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        out.close()
        err.close()
        self.procs.append(p)
        return p

    def start(self, rank_timeout_s: float = 90.0) -> None:
        sims = {}
        custom = dict(SCENARIO.profiles) if SCENARIO else {}
        for name, text in custom.items():
            (self.work / f"{name}.toml").write_text(text)
        for i, spec in enumerate(NODES, start=1):
            profile = str(self.work / f"{spec.profile}.toml") if spec.profile in custom else spec.profile
            sims[spec.id] = self._spawn(f"sim-{spec.id}", [
                str(self.bin / "wes-sim-node"), "--listen", "127.0.0.1:0",
                "--profile", profile, "--models", ",".join(spec.models),
                "--seed", str(i), "--time-scale", str(self.time_scale)])
        for spec in NODES:
            addr = wait_line(self.work / f"sim-{spec.id}.out", "wes-sim-node listening on ", 20,
                             sims[spec.id])
            self.node_urls[spec.id] = f"http://{addr}"
            self.profiles[spec.id] = get_json(f"http://{addr}/wes-sim/profile")
            tags = get_json(f"http://{addr}/api/tags")["models"]
            self.model_sizes[spec.id] = {m["name"]: m["size"] for m in tags}

        api_addr = f"127.0.0.1:{free_port()}"
        config = self.work / "proxy.toml"
        config.write_text(proxy_toml(self.policy, api_addr,
                                     [(s, self.node_urls[s.id]) for s in NODES],
                                     self.routing_extra))
        check = subprocess.run([str(self.bin / "wes-proxy"), "check-config", str(config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"proxy config refused: {check.stderr.strip()}")
        proxy = self._spawn("proxy", [str(self.bin / "wes-proxy"), "--config", str(config)])
        telemetry = wait_line(self.work / "proxy.out", "wes-proxy telemetry listening on ", 30, proxy)
        self.admin = "http://" + wait_line(self.work / "proxy.out", "wes-proxy admin listening on ", 30,
                                           proxy)
        wait_line(self.work / "proxy.out", "wes-proxy api listening on ", 30, proxy)
        self.api = f"http://{api_addr}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.api}/api/version", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise RuntimeError(f"wes-proxy API did not answer; see {self.work}/proxy.log")
                time.sleep(0.1)

        # Reporters: as scripts/demo.sh runs them. The probe at start ranks every node before
        # traffic arrives; its 10 min interval keeps it from running again inside a run.
        for spec in NODES:
            url = self.node_urls[spec.id]
            memory = ["--model-memory", f"{spec.memory_gb}GB"] if spec.memory_gb else []
            streams = ["--probe-streams", self.probe_streams] if self.probe_streams else []
            check = ["--thermal-check", self.thermal_check] if self.thermal_check else []
            self._spawn(f"reporter-{spec.id}", [
                str(self.bin / "wes-reporter"), "--node-id", spec.id,
                "--proxy", f"http://{telemetry}", "--ollama", url, "--sensor", "command",
                "--sensor-command", f"curl -sf --max-time 1 {url}/wes-sim/state",
                "--interval", "1s", "--probe-model", spec.models[0], "--probe-interval", "10m",
                *memory, *streams, *check,
            ], env={"WES_REPORTER_TOKEN": f"bench-{spec.id}"})

        deadline = time.monotonic() + rank_timeout_s
        while True:
            try:
                # Each node ranked on the model its reporter probed.
                ranked = 0
                for probed in sorted({s.models[0] for s in NODES}):
                    nodes = get_json(f"{self.admin}/ranking?model={probed}")["nodes"]
                    ids = {s.id for s in NODES if s.models[0] == probed}
                    ranked += sum(1 for n in nodes if n["id"] in ids
                                  and n.get("rank") is not None and n.get("healthy"))
                if ranked == len(NODES):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every node ranked after {rank_timeout_s:.0f}s; "
                                   f"logs in {self.work}")
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited early ({p.returncode}); logs in {self.work}")
            time.sleep(0.25)

    def stop(self, keep_logs: bool = False) -> None:
        """SIGTERM to every process started; SIGKILL what is left after 5 s."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if keep_logs:
            print(f"routing-quality: logs kept in {self.work}", file=sys.stderr)
        else:
            for f in self.work.iterdir():
                f.unlink()
            self.work.rmdir()
