"""The simulator: workloads, the shipped platform, scoring, and `heddle simulate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from heddle.scheduler.policies import POLICIES
from heddle.scheduler.profiles import compatible
from heddle.scheduler.sim.platforms import DEFAULT_PLATFORM, DEFAULT_SCENARIO, DLA_UNSUPPORTED_OPS, PLATFORMS, SCENARIOS
from heddle.scheduler.sim.scoring import mean_result
from heddle.scheduler.sim.simulator import simulate
from heddle.scheduler.sim.workload import Periodic, Poisson, build_pipelines, chain, generate_arrivals, llm_pipeline
from heddle.server.cli import main
from heddle.server.tools.sim_tables import format_table

PLATFORM, SCENARIO = PLATFORMS[DEFAULT_PLATFORM], SCENARIOS[DEFAULT_SCENARIO]


def test_periodic_and_poisson_arrivals_are_a_pure_function_of_the_seed():
    """A 30 FPS stream gives 30 arrivals a second, each within its jitter; Poisson arrivals are
    the same for the same seed and differ for another."""
    cam = Periodic("cam", chain("p", "m"), fps=30.0, deadline_s=0.03, priority=9, jitter_s=0.002)
    bg = Poisson("bg", chain("q", "m"), rate_hz=50.0, priority=1)
    arrivals = generate_arrivals([cam, bg], 2.0, seed=7)
    frames = [a for a in arrivals if a.source == "cam"]
    assert len(frames) == 60
    assert all(0 <= a.time_s - a.index / 30.0 < 0.002 for a in frames)
    assert [a.time_s for a in arrivals] == sorted(a.time_s for a in arrivals)
    assert arrivals == generate_arrivals([cam, bg], 2.0, seed=7)
    assert arrivals != generate_arrivals([cam, bg], 2.0, seed=8)
    assert 60 < sum(a.source == "bg" for a in arrivals) < 140  # mean 100: 4 sigma either side


def test_llm_requests_are_a_prefill_then_decode_steps():
    """An LLM pipeline is a chain: prefill, then one stage per decode step."""
    pipelines, models = build_pipelines([llm_pipeline("chat", 3)], {"llm_prefill": ("gpu0",), "llm_decode": ("gpu0",)})
    chat = pipelines["chat"]
    assert [s.model for s in chat.stages] == ["llm_prefill"] + ["llm_decode"] * 3
    assert chat.depends_on[chat.stages[2].name] == (chat.stages[1].name,)
    assert models["llm_decode"].devices == ("gpu0",)


def test_shipped_platform_is_consistent_with_its_op_support():
    """Every profiled (model, device) pair is op-compatible; transformers have no DLA figures;
    every model of the default scenario runs somewhere."""
    table = PLATFORM.table()
    devices = {d.id: d for d in PLATFORM.devices}
    for (model, device, _), entry in table.items():
        assert compatible(PLATFORM.models[model].op_types, devices[device]), (model, device)
        assert entry.latency_s > 0
    assert "LayerNormalization" in DLA_UNSUPPORTED_OPS
    assert not any(d.startswith("dla") for m in ("bert_large", "llm_decode") for d in PLATFORM.devices_of(m))
    for source in SCENARIO.sources:
        for stage in source.pipeline.stages:
            assert PLATFORM.devices_of(stage.model)


@pytest.mark.slow
def test_every_policy_finishes_every_request_and_runs_are_reproducible():
    """A short run of the default scenario ends every request under every policy (simulate
    asserts it), and the same seed gives the same result."""
    results = [simulate(PLATFORM, SCENARIO, p, duration_s=1.0, seed=3) for p in sorted(POLICIES)]
    assert [r.policy for r in results] == sorted(POLICIES)
    for r in results:
        assert r.requests > 60 and 0 <= r.violation_rate <= 1 and r.completed <= r.requests
        assert sum(sum(c.values()) for c in r.placements.values()) > 0
    assert simulate(PLATFORM, SCENARIO, "twill", duration_s=1.0, seed=3) == results[-1]
    table = format_table(results)
    assert len(table.splitlines()) == 2 + len(POLICIES) + 2 and "DVR %" in table and "DVR spread" in table


@pytest.mark.slow
def test_twill_violates_at_most_half_as_many_deadlines_as_fcfs_on_the_default_scenario():
    """On the Orin NX-like platform, twill's deadline violation rate is at most half of fcfs's."""
    fcfs = simulate(PLATFORM, SCENARIO, "fcfs", seed=1)
    twill = simulate(PLATFORM, SCENARIO, "twill", seed=1)
    assert twill.violation_rate <= 0.5 * fcfs.violation_rate
    assert "dla0" not in twill.placements.get("bert_large", {})


def test_heddle_simulate_prints_a_table_and_writes_json(tmp_path, capsys):
    """`heddle simulate --policy fcfs` prints one row and writes the report it was asked for."""
    out = tmp_path / "sim.json"
    assert main(["simulate", "--policy", "fcfs", "--duration", "1", "--seed", "2", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("fcfs") and "heddle simulate" in lines[0]
    report = json.loads(out.read_text())
    assert report["seed"] == 2 and [r["policy"] for r in report["results"]] == ["fcfs"]
    assert set(report["results"][0]["per_class"]) == {"9", "3", "1"}


def test_replicas_report_the_mean_of_runs_with_consecutive_seeds(tmp_path, capsys):
    """--replicas 3 --seed 2: each figure is the mean over seeds 2, 3 and 4 (a noisy single draw
    is not the prediction); --replicas 0 is refused."""
    platform, scenario = PLATFORMS[DEFAULT_PLATFORM], SCENARIOS[DEFAULT_SCENARIO]
    runs = [simulate(platform, scenario, "fcfs", duration_s=1.0, seed=seed) for seed in (2, 3, 4)]
    mean = mean_result(runs)
    assert len({r.violation_rate for r in runs}) > 1  # the seeds do differ
    assert mean.violation_rate == sum(r.violation_rate for r in runs) / 3
    assert mean.per_class[9].p99_ms == sum(r.per_class[9].p99_ms for r in runs) / 3
    assert sum(n for d in mean.placements.values() for n in d.values()) == sum(
        n for r in runs for d in r.placements.values() for n in d.values())
    out = tmp_path / "sim.json"
    assert main(["simulate", "--policy", "fcfs", "--duration", "1", "--seed", "2", "--replicas", "3",
                 "--json", str(out)]) == 0
    assert "mean of seeds 2-4" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["replicas"] == 3 and report["results"][0]["violation_rate"] == mean.violation_rate
    assert main(["simulate", "--policy", "fcfs", "--duration", "1", "--replicas", "0"]) == 2
    assert "--replicas" in capsys.readouterr().err


def test_heddle_simulate_rejects_an_unknown_policy(capsys):
    """An unknown policy name exits 2 and names the known ones."""
    assert main(["simulate", "--policy", "lottery", "--duration", "1"]) == 2
    assert "twill" in capsys.readouterr().err


def test_batching_options_make_the_simulated_core_batch_on_the_batch_axis():
    """With max_batch (and a 5 ms queue delay) on every model some passes carry several runs, each
    taking the platform's one-row time on the default batch axis (x batch_scale(rows), its first
    member's noise), and every request still ends."""
    from dataclasses import replace

    from heddle.scheduler import Core, make_policy
    from heddle.scheduler.profiles import batch_scale
    from heddle.scheduler.sim.run_times import NoisyTable, noise
    from heddle.scheduler.sim.simulator import run_scenario, scenario_setup

    setup = scenario_setup(PLATFORM, SCENARIO)
    models = {n: replace(m, options={"max_batch": 4, "max_queue_delay_us": 5000}) for n, m in setup.models.items()}
    core = Core(PLATFORM.devices, models, make_policy("edf"), setup.profiles)
    driver, records = run_scenario(core, NoisyTable(setup.truth, setup.cv, 1), setup,
                                   generate_arrivals(SCENARIO.sources, 2.0, 1), log_runs=True)
    assert len(records) == len(generate_arrivals(SCENARIO.sources, 2.0, 1))
    batches = [(start, end, d) for start, end, d in driver.runs if d.batch]
    assert batches and all(2 <= len(d.members) <= 4 for _, _, d in batches)
    for start, end, d in batches:  # no power control here: every device stays at level 0
        one_row_s = setup.truth[(d.model, d.device, 0)].latency_s * noise(1, d.request_id, d.stage, setup.cv[d.model])
        assert end - start == pytest.approx(one_row_s * batch_scale(d.rows))


def test_heddle_simulate_takes_batching_options(tmp_path, capsys):
    """--max-batch (and --max-queue-delay-us) turn batching on for every model and say so in the
    title and the report; a delay without --max-batch, or a bad size, exits 2 naming the option."""
    out = tmp_path / "sim.json"
    assert main(["simulate", "--policy", "edf", "--duration", "1", "--max-batch", "4", "--max-queue-delay-us", "500",
                 "--json", str(out)]) == 0
    assert "batching {'max_batch': 4, 'max_queue_delay_us': 500.0}" in capsys.readouterr().out
    assert json.loads(out.read_text())["batching"] == {"max_batch": 4, "max_queue_delay_us": 500.0}
    assert main(["simulate", "--policy", "edf", "--duration", "1", "--max-queue-delay-us", "500"]) == 2
    assert "--max-queue-delay-us needs --max-batch" in capsys.readouterr().err
    assert main(["simulate", "--policy", "edf", "--duration", "1", "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err


def test_policy_options_reach_the_policy():
    """Options such as twill's mapping change what the simulated core does."""
    fit = simulate(PLATFORM, SCENARIO, "twill", duration_s=2.0)
    energy = simulate(PLATFORM, SCENARIO, "twill", duration_s=2.0, policy_options={"mapping": "energy"})
    assert fit.placements != energy.placements


def test_the_scheduler_package_stays_pure():
    """Importing the whole scheduler, simulator included, pulls in no I/O or runtime library."""
    code = ("import sys, heddle.scheduler, heddle.scheduler.sim, heddle.scheduler.twill;"
            "print(sorted(m for m in ('asyncio', 'grpc', 'onnxruntime', 'onnx', 'tritonclient', 'socket')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_scheduler_package_imports_only_itself_and_the_standard_library():
    """Every import in scheduler/ (the simulation included) names the standard library or
    heddle.scheduler: no numpy, no server code, no argparse wiring."""
    import ast
    from pathlib import Path

    import heddle.scheduler

    root = Path(heddle.scheduler.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [(path.relative_to(root).as_posix(), n) for n in names]
    outside = [(f, n) for f, n in found if not (n == "heddle.scheduler" or n.startswith("heddle.scheduler.")
                                               or n.split(".")[0] in sys.stdlib_module_names or n == "__future__")]
    assert len({f for f, _ in found}) > 20 and outside == []
    assert not any(n == "argparse" for _, n in found)


def test_power_budgets_print_the_budget_table(tmp_path, capsys):
    """`heddle simulate --power-budgets 15 --duration 1`: the markdown table with the unconstrained
    row and four rows for the budget, and the rows in the JSON report; a bad list exits 2."""
    out = tmp_path / "budgets.json"
    assert main(["simulate", "--power-budgets", "15", "--duration", "1", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| budget W | control + policy |") and len(lines) == 2 + 1 + 4
    assert lines[2].startswith("| none | none + twill |") and lines[3].startswith("| 15 | heddle + twill |")
    report = json.loads(out.read_text())
    assert report["budgets_w"] == [15.0] and [r["control"] for r in report["rows"]] == [
        "none", "heddle", "governor", "heddle", "governor"]
    assert main(["simulate", "--power-budgets", "15,lots"]) == 2
    assert "--power-budgets '15,lots'" in capsys.readouterr().err
