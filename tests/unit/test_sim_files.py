"""`heddle simulate` with a workload file and a platform file, per-request records, per-class means
and per-device utilisation; and the simulator checked against queueing theory through them."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from server_fixtures import REPO_ROOT

from heddle.scheduler.sim.platform_file import parse_platform
from heddle.scheduler.sim.workload import Periodic, Poisson
from heddle.scheduler.sim.workload_file import parse_workload
from heddle.server.cli import main

EXAMPLES = REPO_ROOT / "docs" / "sim"


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_server(latency_ms: float, cv: float) -> str:
    """A platform of one device and one model: a single-server queue."""
    return f"""
[[devices]]
id = "dev0"

[[models]]
name = "job"
latency_ms = {{ cpu = {latency_ms} }}
cv = {cv}
"""


def poisson_jobs(rate_hz: float, duration_s: float) -> str:
    return f"""
duration_s = {duration_s}
[[apps]]
name = "jobs"
pipeline = "job"
arrival = "poisson"
rate_hz = {rate_hz}
"""


@pytest.mark.slow
@pytest.mark.parametrize("cv", [0.0, 0.5])
def test_a_single_server_queue_matches_pollaczek_khinchine(tmp_path, capsys, cv):
    """Poisson arrivals at 50/s on one device taking 10 ms (cv 0: M/D/1; 0.5: M/G/1): the mean latency in the
    records is within 5% of s + lambda E[S^2] / (2 (1 - rho)) and the device is busy rho = 50% of the time."""
    rate_hz, service_s = 50.0, 0.010
    platform = _write(tmp_path, "platform.toml", one_server(1000 * service_s, cv))
    workload = _write(tmp_path, "workload.toml", poisson_jobs(rate_hz, 200.0))
    records, report = tmp_path / "records.csv", tmp_path / "report.json"
    assert main(["simulate", "--policy", "fcfs", "--platform", platform, "--workload", workload,
                 "--records", str(records), "--json", str(report)]) == 0
    with records.open() as f:
        rows = list(csv.DictReader(f))
    rho = rate_hz * service_s
    expected_ms = 1000 * (service_s + rate_hz * service_s ** 2 * (1 + cv * cv) / (2 * (1 - rho)))
    mean_ms = statistics.fmean(float(r["latency_ms"]) for r in rows)
    assert mean_ms == pytest.approx(expected_ms, rel=0.05), (mean_ms, expected_ms, len(rows))
    result = json.loads(report.read_text())["results"][0]
    assert result["utilisation"]["dev0"] == pytest.approx(rho, abs=0.02)
    assert result["per_class"]["1"]["mean_ms"] == pytest.approx(mean_ms)


def test_the_shipped_examples_run_and_their_records_add_up(tmp_path, capsys):
    """docs/sim's workload on docs/sim's platform: one JSON line per request, whose latencies give the
    report's per-class means; every device has a utilisation, printed in the second table."""
    records, report = tmp_path / "records.jsonl", tmp_path / "report.json"
    assert main(["simulate", "--policy", "twill", "--duration", "2", "--workload", str(EXAMPLES / "workload.toml"),
                 "--platform", str(EXAMPLES / "platform.toml"), "--records", str(records),
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "scenario 'edge-mix'" in out and "gpu0 util %" in out and "prio 4 mean ms" in out
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    result = json.loads(report.read_text())["results"][0]
    assert len(rows) == result["requests"] and {r["policy"] for r in rows} == {"twill"}
    assert {r["source"] for r in rows} >= {"cameras/0", "cameras/1", "voice"}
    for priority, stats in result["per_class"].items():
        done = [r["latency_ms"] for r in rows if r["priority"] == int(priority) and r["outcome"] == "OK"]
        assert stats["mean_ms"] == pytest.approx(statistics.fmean(done))
    assert set(result["utilisation"]) == {"gpu0", "dla0", "cpu0"}
    assert all(0.0 <= u <= 1.0 for u in result["utilisation"].values())


def test_defaults_fill_what_the_files_leave_out():
    """A device is a cpu with one level and one slot, a model costs 0 W and varies 5%; priority 0 is the
    default_priority; periodic streams are spread over the period; stages without wiring form a chain."""
    platform = parse_platform({"devices": [{"id": "d"}, {"id": "g", "kind": "gpu", "backend": "onnxruntime",
                                                          "power": {"idle_w": 1, "active_w": [8, 2]},
                                                          "speed": {"level_clock": [1.0, 0.5]}}],
                               "models": [{"name": "m", "latency_ms": {"cpu": 4, "gpu": 1}}]})
    d, g = platform.devices
    assert (d.kind, d.slots, d.options["speed"]["level_clock"]) == ("cpu", 1, (1.0,))
    assert platform.models["m"].power_w == {"cpu": 0.0, "gpu": 8.0} and platform.models["m"].cv == 0.05
    assert platform.level_power == {"cpu": (1.0,), "gpu": (1.0, 0.25)}
    workload = parse_workload({"default_priority": 2, "pipelines": [{"name": "p", "stages": [
        {"name": "a", "model": "m"}, {"name": "b", "model": "m"}]}], "apps": [
        {"name": "cams", "pipeline": "p", "arrival": "periodic", "rate_hz": 10, "deadline_ms": 100, "streams": 2},
        {"name": "solo", "pipeline": "m", "rate_hz": 1}]}, ["m"])
    cam0, cam1, solo = workload.sources
    assert isinstance(cam0, Periodic) and (cam0.name, cam1.name, cam1.phase_s) == ("cams/0", "cams/1", 0.05)
    assert cam0.priority == 2 and cam0.pipeline.stages[1].after == ("a",)
    assert isinstance(solo, Poisson) and solo.pipeline.stages[0].model == "m" and workload.duration_s == 20.0


@pytest.mark.parametrize(("platform_extra", "workload_extra", "message"), [
    ("", 'pipeline = "nope"\narrival = "poisson"\nrate_hz = 1', "neither a [[pipelines]] table"),
    ("", 'pipeline = "job"\narrival = "burst"\nrate_hz = 1', "arrival 'burst' is not simulated"),
    ("", 'pipeline = "job"\narrival = "periodic"\nrate_hz = 1', "periodic arrivals need deadline_ms"),
    ("", 'pipeline = "job"\narrival = "poisson"\nrate_hz = 1\ncolour = "red"', "unknown key(s) ['colour']"),
    ('[[models]]\nname = "x"\nlatency_ms = { npu = 1 }\n', 'pipeline = "job"\nrate_hz = 1', "kinds ['npu'] no device"),
    ('[[devices]]\nid = "dev1"\nspeed = { level_clock = [0.5, 1.0] }\n', 'pipeline = "job"\nrate_hz = 1',
     "from the fastest level down"),
])
def test_bad_files_exit_2_naming_the_file_and_the_key(tmp_path, capsys, platform_extra, workload_extra, message):
    """A mistake in either file stops `heddle simulate` with exit 2 and a message saying where and what."""
    platform = _write(tmp_path, "platform.toml", one_server(10, 0) + platform_extra)
    workload = _write(tmp_path, "workload.toml", f'[[apps]]\nname = "a"\n{workload_extra}\n')
    assert main(["simulate", "--platform", platform, "--workload", workload, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "toml" in err


def test_power_budgets_take_the_files_and_refuse_kinds_the_plant_cannot_power(tmp_path, capsys):
    """--power-budgets runs on a workload and platform file; a device kind with no idle power in the
    simulated plant, and --records where no requests are simulated, exit 2 saying why."""
    workload, platform = str(EXAMPLES / "workload.toml"), str(EXAMPLES / "platform.toml")
    assert main(["simulate", "--power-budgets", "12", "--duration", "1", "--workload", workload,
                 "--platform", platform]) == 0
    assert "heddle + twill" in capsys.readouterr().out
    npu = _write(tmp_path, "npu.toml", one_server(10, 0).replace('id = "dev0"', 'id = "dev0"\nkind = "npu"')
                 .replace("cpu =", "npu ="))
    jobs = _write(tmp_path, "workload.toml", poisson_jobs(10, 1))
    assert main(["simulate", "--power-budgets", "12", "--workload", jobs, "--platform", npu]) == 2
    assert "no idle power for device kinds ['npu']" in capsys.readouterr().err
    assert main(["simulate", "--power-budgets", "12", "--records", str(tmp_path / "r.jsonl")]) == 2
    assert "--records writes the requests of a simulated workload" in capsys.readouterr().err
