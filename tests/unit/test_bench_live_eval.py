"""The live evaluation's bookkeeping (bench/live_eval.py, live_eval_figures.py) and its SUMMARY.md
section and plot (bench/summary_live.py): turns, means over seeds with their spread, acceptance."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from bench import summary
from bench.live_eval import turn_order
from bench.live_eval_figures import spread, summarise
from bench.summary_live import LIVE_JSON, LIVE_PNG


def test_every_policy_takes_one_turn_per_round_in_a_rotated_order():
    """Round r starts with the r-th policy, so no policy always follows the same one."""
    turns = turn_order(["a", "b", "c"], 3)
    assert [p for r, p in turns if r == 0] == ["a", "b", "c"]
    assert [p for r, p in turns if r == 1] == ["b", "c", "a"]
    assert [p for r, p in turns if r == 2] == ["c", "a", "b"]


def test_spread_is_the_mean_and_sample_deviation_and_ignores_missing_seeds():
    """NaN (a seed without that figure) is left out; one seed has no spread."""
    s = spread([1.0, 3.0, math.nan])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2)) and (s["min"], s["max"]) == (1.0, 3.0)
    assert spread([5.0])["std"] == 0.0


def _figures(dvr: float, mean_ms: float) -> dict:
    classes = {"4": {"violation_rate": dvr, "mean_ms": mean_ms / 2, "p99_ms": mean_ms},
               "1": {"violation_rate": 0.0, "mean_ms": mean_ms * 2, "p99_ms": mean_ms * 4}}
    return {"violation_rate": dvr, "antt": 2.0, "mean_ms": mean_ms, "per_class": classes, "requests": 100,
            "migrations": 3, "freezes": 0, "background_rps": 400 / mean_ms}


def _seeds() -> dict:
    """Two seeds: twill at 1% / 20 ms, edf at 4% / 50 ms; the simulator right for twill, off for edf."""
    def seed(shift: float) -> dict:
        turn = [{"policy": p, "loadavg_1m": [2.0, 3.0]} for p in ("twill", "edf")]
        return {"turns": turn, "policies": {
            "twill": {"live": _figures(0.01, 20 + shift), "sim_under_load": _figures(0.01, 21)},
            "edf": {"live": _figures(0.04, 50 + shift), "sim_under_load": _figures(0.2, 50)}}}
    return {"1": seed(-1.0), "2": seed(1.0)}


def test_acceptance_compares_twill_with_the_best_baseline_on_seed_means():
    """twill's DVR 1% <= half of edf's 4%; its mean 20 ms is 60% under edf's 50 ms; edf's DVR is mispredicted."""
    out = summarise(_seeds(), ["twill", "edf"], 0.25, 0.02)
    acc = out["acceptance"]
    assert acc["dvr"]["best_baseline"] == "edf" and acc["dvr"]["twill_at_most_half"]
    assert acc["mean_ms"]["cut"] == pytest.approx(0.6) and acc["mean_ms"]["paper_54pct_met"]
    assert acc["sim_within_tolerance"]["misses"] == ["edf: dvr"]
    # Little's law: 54% under edf's background mean takes 1 / 0.46 of edf's background throughput.
    bound = acc["mean_ms"]["background"]
    assert bound["best_baseline"] == "edf" and bound["best_baseline_rps"] == pytest.approx(8.0, rel=1e-3)
    assert bound["rps_needed_for_54pct"] == pytest.approx(8.0 / 0.46, rel=1e-3)
    assert bound["most_rps"] == pytest.approx(20.0, rel=1e-2)
    assert out["per_policy"]["twill"]["live"]["mean_ms"]["std"] == pytest.approx(math.sqrt(2))
    assert out["per_policy"]["twill"]["loadavg_1m"]["mean"] == 2.5


@pytest.mark.slow  # draws its plot with matplotlib
def test_summary_has_the_live_table_with_the_spread_and_its_plot(tmp_path: Path):
    """SUMMARY.md's section 7 has a row per policy (mean ± std over seeds), and a plot when matplotlib is here."""
    params = {"seeds": [1, 2], "duration_s": 60.0, "rounds": 3, "fps": 20.0, "deadline_ms": 40.0, "concurrency": 8}
    report = {"params": params, **summarise(_seeds(), ["twill", "edf"], 0.25, 0.02)}
    (tmp_path / LIVE_JSON).write_text(json.dumps(report))
    text = summary.build(tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| twill |"))
    assert row.startswith("| twill | 1.0 ± 0.0 | 2.00 ± 0.00 | 20.0 ± 1.4 |")
    assert "Not run (no power_live.json)" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / LIVE_PNG).read_bytes()[:4] == b"\x89PNG"
        assert f"]({LIVE_PNG})" in text


def _raw(policy: str, watts: list[float], levels: list[int], dvr_late: int, latency_ms: float) -> dict:
    """One arm as bench/power_live.py records it: a period every second, 10 frames and 10 background requests."""
    periods = [{"t_s": float(i), "box_w": w, "levels": {"gpu0": lv}}
               for i, (w, lv) in enumerate(zip(watts, levels, strict=True))]
    stages = [{"stage": "cnn", "device": "gpu0", "compute_ms": 5.0 * (1 + levels[-1])}]
    records = [{"priority": p, "deadline_ms": 40.0 if p == 4 else None, "status": "OK", "stages": stages,
                "server_total_ms": latency_ms, "server_deadline_missed": p == 4 and i < dvr_late}
               for p in (4, 1) for i in range(10)]
    return {"policy": policy, "start_s": 0.0, "end_s": float(len(watts)), "periods": periods, "records": records,
            "freezes": 0, "loadavg_1m": [2.0, 2.0], "dvfs_level_metric": [{"gpu0": float(lv)} for lv in levels]}


def test_power_acceptance_and_the_summary_table(tmp_path: Path):
    """twill + controller within budget + 5% in every settled period, its frames' DVR 10 points over the
    unconstrained run's, 60% under the governor's mean latency; heddle_dvfs_level took 0 and 1; section 8's row."""
    from bench.power_live_figures import arm_figures
    from bench.power_live_figures import summarise as power_summarise
    from bench.summary_live import POWER_LIVE_JSON

    arms = {"unconstrained": arm_figures(_raw("twill", [10.0] * 6, [0] * 6, 0, 20.0), None, 1.0)}
    arms["twill+controller"] = arm_figures(_raw("twill", [10.0, 5.0, 5.1, 5.2, 5.0, 5.0], [0, 1, 1, 1, 1, 1], 1, 20.0),
                                           5.0, 1.0)
    arms["fcfs+governor"] = arm_figures(_raw("fcfs", [10.0, 9.0, 8.0, 8.0, 8.0, 8.0], [0, 1, 2, 2, 2, 2], 3, 50.0),
                                        5.0, 1.0)
    report = power_summarise({"1": {"budget_w": 5.0, "arms": arms}})
    acc = report["acceptance"]
    # fcfs + governor bought its latency with 8 W of a 5 W budget: no baseline kept to it.
    assert acc["baselines_within_budget_5pct_ge_99pct"] == [] and "best_baseline_within_budget" not in acc["mean_ms"]
    arms["edf+governor"] = arm_figures(_raw("edf", [10.0, 5.0, 5.0, 5.0, 5.0, 5.0], [0, 2, 2, 2, 2, 2], 3, 80.0),
                                       5.0, 1.0)
    kept = power_summarise({"1": {"budget_w": 5.0, "arms": arms}})["acceptance"]
    assert kept["baselines_within_budget_5pct_ge_99pct"] == ["edf+governor"]
    assert kept["mean_ms"]["best_baseline"] == "fcfs+governor"
    assert kept["mean_ms"]["best_baseline_within_budget"] == "edf+governor"
    assert kept["mean_ms"]["cut_vs_within_budget"] == pytest.approx(0.75)
    assert acc["within_budget_5pct_ge_99pct"] and acc["top_dvr_delta_points"] == pytest.approx(10.0)
    assert not acc["top_dvr_within_2_points"]
    assert acc["mean_ms"]["best_baseline"] == "fcfs+governor" and acc["mean_ms"]["cut"] == pytest.approx(0.6)
    assert acc["heddle_dvfs_level_moves"] and acc["heddle_dvfs_level_values_seen"] == [0.0, 1.0]
    assert report["per_arm"]["fcfs+governor"]["compute_ms_cnn@gpu0"]["mean"] == 15.0  # at level 2
    (tmp_path / POWER_LIVE_JSON).write_text(json.dumps(report))
    text = summary.build(tmp_path, plot=False).read_text()
    assert "| twill+controller | 100.0 ± 0.0 | 5.06 ± 0.00 | 10.0 ± 0.0 | 10.0 ± 0.0 |" in text
