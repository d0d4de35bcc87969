"""`wes-reporter joules` (the second seed's protocol) against a simulated node: the command
sensor reads the simulator's energy counter, so every run's energy is exact and the report's
figures can be checked against the simulator's own."""

import json
import subprocess
import tempfile
from pathlib import Path

from conftest import BIN, Fleet, get_json, read_line_with


def test_the_protocol_reports_runs_spread_and_conditions():
    f = Fleet(Path(tempfile.mkdtemp(prefix="wes-joules-")))
    try:
        proc, log = f.spawn("sim", [str(BIN / "wes-sim-node"), "--listen", "127.0.0.1:0",
                                    "--profile", "rtx-4090", "--models", "llama3.2:3b"])
        addr = read_line_with(proc, "listening on", log).rsplit(" ", 1)[1]
        before = get_json(f"http://{addr}/wes-sim/state")["energy_joules"]
        run = subprocess.run(
            [str(BIN / "wes-reporter"), "joules", "--ollama", f"http://{addr}",
             "--sensor", "command", "--sensor-command", f"curl -sf http://{addr}/wes-sim/state",
             "--model", "llama3.2:3b", "--runs", "3", "--tokens", "64", "--idle", "1s",
             "--stable-for", "500ms", "--interval", "200ms"],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        after = get_json(f"http://{addr}/wes-sim/state")["energy_joules"]
    finally:
        f.close()
    c = report["conditions"]
    assert c["model"] == "llama3.2:3b" and c["runs"] == 3 and c["tokens_per_run"] == 64
    assert c["thermal"].startswith("steady") and c["thermal_state_start"] == "Normal"
    assert c["engine"].startswith("ollama API") and c["machine"]["cores"] >= 1
    assert report["idle"]["source"] == "energy counter"
    # The simulator idles at a fixed power: the baseline finds it.
    assert 0 < report["idle"]["watts"] < 100
    runs = report["runs"]
    assert [r["tokens"] for r in runs] == [64, 64, 64]
    for r in runs:
        assert r["joules_per_token"] > r["joules_per_token_net"] > 0
    # Every joule of the runs and the idle baseline was drawn while the command ran.
    measured = sum(r["joules"] for r in runs) + report["idle"]["joules"]
    assert measured < after - before
    assert report["joules_per_token"]["cv_pct"] < 5
    mean = sum(r["joules_per_token"] for r in runs) / 3
    assert abs(report["joules_per_token"]["mean"] - mean) < 1e-9


def test_a_sensor_without_power_is_a_clear_error():
    run = subprocess.run(
        [str(BIN / "wes-reporter"), "joules", "--ollama", "http://127.0.0.1:9",
         "--sensor", "command", "--sensor-command", "echo '{}'", "--model", "m",
         "--idle", "300ms", "--stable-for", "100ms", "--interval", "100ms"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "idle baseline" in run.stderr and "neither energy nor power" in run.stderr
