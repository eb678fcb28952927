"""The benchmark suite's SUMMARY.md: tables rebuilt from the parts' JSON and the raw per-request records."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from heddle.clients.loadgen import RequestRecord
from heddle.clients.report import write_records

_SPEC = importlib.util.spec_from_file_location(
    "bench_summary", Path(__file__).resolve().parents[2] / "bench" / "summary.py")
summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(summary)

WINDOW_S = 2.0
FRAME, NPC = "frame DNN 60 FPS", "NPC dialogue LLM"


def rec(app: str, seq: int, latency_ms: float, status: str = "OK") -> RequestRecord:
    priority, deadline_ms = (4, 16.7) if app == FRAME else (2, 500.0)
    return RequestRecord(app=app, pipeline="classify", priority=priority, deadline_ms=deadline_ms,
                         seq=seq, request_id=f"{app}-{seq}", scheduled_s=0.1 * seq, sent_s=0.1 * seq,
                         latency_ms=latency_ms, status=status,
                         **({"server_total_ms": latency_ms - 1, "queue_ms": 0.5, "compute_ms": latency_ms - 2}
                            if status == "OK" else {}))


# edf: frames 10, 12 in time, 20 late, one shed; NPC 100 in time, 600 late -> 3 of 6 met.
EDF = [rec(FRAME, 0, 10.0), rec(FRAME, 1, 12.0), rec(FRAME, 2, 20.0), rec(FRAME, 3, 16.0, "DEADLINE_EXCEEDED"),
       rec(NPC, 0, 100.0), rec(NPC, 1, 600.0)]
# fcfs: everything in time.
FCFS = [rec(FRAME, 0, 8.0), rec(FRAME, 1, 9.0), rec(FRAME, 2, 10.0), rec(FRAME, 3, 11.0),
        rec(NPC, 0, 50.0), rec(NPC, 1, 60.0)]

GATEWAY = {
    "benchmark": "gateway_overhead",
    "params": {"requests": 100, "request_bytes": 1049, "concurrency": 8},
    "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "platform": "Linux-test", "python": "3.11.7",
                "versions": {"heddle": "0.1.0"}},
    "results": {
        "raw": {"sequential": {"p50_ms": 0.8, "p99_ms": 2.0},
                "concurrent": {"p50_ms": 5.0, "p99_ms": 8.0, "throughput_rps": 1400.0,
                               "server_cpu_ms_per_request": 0.41}},
        "heddle": {"sequential": {"p50_ms": 1.6, "p99_ms": 3.0},
                   "concurrent": {"p50_ms": 10.0, "p99_ms": 12.0, "throughput_rps": 700.0,
                                  "server_cpu_ms_per_request": 1.5}}},
    "ratios": {"heddle/raw": {"sequential.p50_ms": 2.0, "sequential.p99_ms": 1.5, "concurrent.p50_ms": 2.0,
                              "concurrent.p99_ms": 1.5, "concurrent.throughput_rps": 0.5}},
}

TRITON = {
    "benchmark": "triton_vs_heddle",
    "params": {"duration_s": 8.0, "warmup_s": 2.0, "models": {"triton_ensemble": "chain"}},
    "notes": ["same machine"],
    "results": {
        "triton_ensemble": {"4": {"throughput_rps": 300.0, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0,
                                  "server_cpu_ms_per_request": {"triton": 4.0, "heddle": 0.5}}},
        "heddle_local": {"4": {"throughput_rps": 150.0, "p50_ms": 20.0, "p99_ms": 50.0, "errors": 2,
                               "server_cpu_ms_per_request": {"triton": 0.0, "heddle": 6.0}}}},
    "ratios": {"heddle_local/triton_ensemble": {"4": {"p50_ms": 2.0, "p99_ms": 2.5, "throughput_rps": 0.5}}},
}


def write_policy_run(results: Path, policy: str, records: list[RequestRecord]) -> Path:
    folder = results / "policies" / "gaming" / policy
    folder.mkdir(parents=True)
    apps = [{"name": FRAME}, {"name": NPC}]
    run = {"scenario": {"name": "gaming", "apps": apps}, "window_s": WINDOW_S, "duration_s": WINDOW_S,
           "seed": 0, "rate_scale": 1.0}
    (folder / "run.json").write_text(json.dumps(run))
    write_records(folder / "requests.jsonl", records)
    (folder / "policy.json").write_text(json.dumps({"policy": policy, "bench_exit": 0, "loadavg_1m_after": 3.4}))
    return folder


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "2026-11-22"
    out.mkdir()
    (out / "gateway_overhead.json").write_text(json.dumps(GATEWAY))
    (out / "triton_vs_heddle.json").write_text(json.dumps(TRITON))
    write_policy_run(out, "edf", EDF)
    write_policy_run(out, "fcfs", FCFS)
    manifest = {"command": "python bench/run_all.py --quick", "mode": "quick", "wall_s": 300.0,
                "started_at": "2026-11-22T05:00:00+00:00", "loadavg_start": [1.5, 1, 1],
                "loadavg_end": [2.0, 1, 1], "machine": GATEWAY["machine"],
                "parts": {"gateway": {"status": "ok", "wall_s": 40.0, "note": ""},
                          "triton": {"status": "ok", "wall_s": 120.0, "note": ""},
                          "policies": {"status": "ok", "wall_s": 140.0, "note": ""}}}
    (out / "run_all.json").write_text(json.dumps(manifest))
    return out


def md_table(text: str, heading: str, prefix: str = "## ") -> list[dict[str, str]]:
    """The first markdown table after the `## ...heading...` line (or a line starting with
    `prefix` that holds heading), as one dict per row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(prefix) and heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    header, _, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def policy_rows(results: Path) -> dict[str, dict[str, str]]:
    text = summary.build(results, plot=False).read_text()
    return {row["policy"]: row for row in md_table(text, "scheduling policy")}


class TestPoliciesTable:
    def test_figures_are_recomputed_from_the_records(self, results: Path):
        """Each policy's row follows the report definitions applied to that run's requests.jsonl."""
        rows = policy_rows(results)
        edf_ok_ms = [10.0, 12.0, 20.0, 100.0, 600.0]
        assert rows["edf"]["sent"] == "6" and rows["edf"]["ok"] == "5"
        assert rows["edf"]["viol"] == "50.0%"  # 3 of 6 with a deadline missed it
        assert rows["edf"]["goodput /s"] == "1.5"  # 3 in time over 2 s
        assert rows["edf"]["p99 ms"] == f"{np.percentile(edf_ok_ms, 99):.2f}"
        assert rows["edf"]["p50 ms"] == "20.00"
        assert rows["edf"]["top class: viol"] == "4: 50.0%"  # frames: 2 of 4 finished in time
        assert rows["fcfs"]["viol"] == "**0.0%**" and rows["fcfs"]["goodput /s"] == "3.0"
        assert rows["fcfs"]["load 1m"] == "3.4"  # from policy.json, as run_all recorded it

    def test_policies_json_is_rebuilt_from_the_records_not_reused(self, results: Path):
        """A stale policies.json is replaced, and changing a record changes the table."""
        (results / "policies.json").write_text(json.dumps({"runs": []}))
        assert policy_rows(results)["fcfs"]["viol"] == "**0.0%**"
        assert len(json.loads((results / "policies.json").read_text())["runs"]) == 2
        late = [*FCFS[:-1], rec(NPC, 1, 900.0)]
        shutil.rmtree(results / "policies" / "gaming" / "fcfs")
        write_policy_run(results, "fcfs", late)
        assert policy_rows(results)["fcfs"]["viol"] == "**16.7%**"  # 1 of 6 late, still the best

    def test_rows_follow_the_shipped_policy_order_and_bold_the_best(self, results: Path):
        """fcfs (listed first in POLICIES) comes before edf, and only the lowest violation rate is bold."""
        rows = list(policy_rows(results).values())
        assert [r["policy"] for r in rows] == ["fcfs", "edf"]
        assert [r["viol"].startswith("**") for r in rows] == [True, False]

    def test_a_failed_bench_run_is_marked(self, results: Path):
        """A run whose `heddle bench` exited non-zero says so next to the policy name."""
        (results / "policies" / "gaming" / "edf" / "policy.json").write_text(
            json.dumps({"policy": "edf", "bench_exit": 1}))
        assert "edf (bench exit 1)" in policy_rows(results)


def with_llm(records: list[RequestRecord], ttft_ms: tuple[float, float]) -> list[RequestRecord]:
    """The records with energy on every OK one, and 20 tokens with the given TTFTs on the NPC ones."""
    out, ttfts = [], iter(ttft_ms)
    for r in records:
        extra = {"energy_j": 0.25, "energy_estimated": 1.0} if r.status == "OK" else {}
        if r.app == NPC:
            extra.update(tokens=20.0, ttft_ms=next(ttfts), tpot_ms=2.0, client_ttft_ms=40.0)
        out.append(dataclasses.replace(r, extra=extra))
    return out


class TestLlmAndEnergy:
    def test_llm_table_and_energy_column_come_from_the_records(self, tmp_path: Path):
        """With LLM and energy in the records, SUMMARY.md gets an LLM table per (scenario, policy,
        app) and a J/req column labelled estimated, both recomputed from requests.jsonl."""
        write_policy_run(tmp_path, "edf", with_llm(EDF, (30.0, 50.0)))
        write_policy_run(tmp_path, "fcfs", with_llm(FCFS, (10.0, 20.0)))
        text = summary.build(tmp_path, plot=False).read_text()
        rows = {r["policy"]: r for r in md_table(text, "scheduling policy")}
        assert rows["edf"]["J/req (estimated)"] == "0.250"
        llm = {r["policy"]: r for r in md_table(text, "LLM apps (streamed", prefix="")}
        assert llm["edf"]["LLM app"] == NPC and llm["edf"]["generated/sent"] == "2/2"
        assert llm["edf"]["tokens /s"] == "20.0"  # 40 tokens over 2 s
        assert llm["edf"]["TTFT p50 ms"] == "40.0" and llm["edf"]["TTFT p99 ms"] == f"{np.percentile([30, 50], 99):.1f}"
        assert llm["fcfs"]["TTFT p99 ms"] == f"**{np.percentile([10, 20], 99):.1f}**"  # the lower one
        assert llm["edf"]["tok/s per request p50"] == f"{np.median([20 / 0.1, 20 / 0.6]):.0f}"
        doc = json.loads((tmp_path / "policies.json").read_text())
        assert doc["runs"][0]["apps"][NPC]["llm"]["tokens"] == 40.0

    def test_runs_without_llm_or_energy_add_no_columns(self, results: Path):
        """The fixture runs carry neither: no LLM table and no energy column."""
        text = summary.build(results, plot=False).read_text()
        assert "LLM apps" not in text and "J/req" not in text


class TestOtherParts:
    def test_gateway_table_comes_from_its_json(self, results: Path):
        """Modes and the heddle/raw ratio row carry the figures of gateway_overhead.json."""
        text = summary.build(results, plot=False).read_text()
        rows = {r["mode"]: r for r in md_table(text, "Gateway overhead")}
        assert rows["raw"]["seq p50 ms"] == "0.80" and rows["heddle"]["req/s"] == "700"
        assert rows["heddle"]["server CPU ms/req"] == "1.50"
        assert rows["heddle/raw"]["req/s"] == "x0.50" and rows["heddle/raw"]["seq p99 ms"] == "x1.50"

    def test_triton_table_sums_server_cpu_and_shows_ratios(self, results: Path):
        """Each target row has its throughput, latency, ratio to the ensemble and all servers' CPU."""
        text = summary.build(results, plot=False).read_text()
        rows = {r["target"]: r for r in md_table(text, "Triton")}
        assert rows["heddle_local"]["p99 x/triton_ensemble"] == "x2.50"
        assert rows["heddle_local"]["errors"] == "2"
        assert rows["triton_ensemble"]["server CPU ms/req"] == "4.50"
        assert rows["triton_ensemble"]["p50 x/triton_ensemble"] == "–"

    def test_missing_parts_say_not_run(self, tmp_path: Path):
        """With only the gateway JSON, the other sections say they did not run instead of showing tables."""
        (tmp_path / "gateway_overhead.json").write_text(json.dumps(GATEWAY))
        text = summary.build(tmp_path, plot=False).read_text()
        assert "Not run (no triton_vs_heddle.json)" in text
        assert "Not run (no policies/ report folders" in text
        assert "2 CPUs (Test CPU)" in text  # machine taken from the gateway JSON

    def test_rebuilding_gives_the_same_file(self, results: Path):
        """SUMMARY.md is a pure function of the folder: building twice gives identical bytes."""
        first = summary.build(results, plot=False).read_bytes()
        assert summary.build(results, plot=False).read_bytes() == first
        assert b"**ok** in 40 s" in first and b"(quick settings)" in first


class TestPlots:
    @pytest.mark.slow
    def test_policy_violation_plot_is_a_png_linked_from_the_summary(self, results: Path):
        """With matplotlib, build draws policy_violations.png and SUMMARY.md embeds it."""
        pytest.importorskip("matplotlib", reason="plots need the bench extra (matplotlib)")
        text = summary.build(results).read_text()
        assert (results / "policy_violations.png").read_bytes()[:4] == b"\x89PNG"
        assert "![violation rate per policy](policy_violations.png)" in text

    def test_power_series_puts_energy_in_the_completion_second(self):
        """Energy lands in the bin where the response arrived; power is joules per bin second."""
        from heddle.clients.plots import power_series

        recs = [rec(FRAME, 0, 100.0), rec(FRAME, 5, 600.0), rec(FRAME, 12, 10.0)]
        for r, joules in zip(recs, (2.0, 3.0, 4.0), strict=True):
            r.extra["energy_j"] = joules  # done at 0.1 s, 1.1 s and 1.21 s
        t_s, power_w = power_series(recs)
        assert t_s.tolist() == [0.0, 1.0] and power_w.tolist() == [2.0, 7.0]
        assert power_series(FCFS)[0].size == 0

    @pytest.mark.slow
    def test_power_plot_only_when_records_have_energy(self, tmp_path: Path):
        """write_plots adds power.png for records with energy_j and leaves it out otherwise."""
        pytest.importorskip("matplotlib", reason="plots need the bench extra (matplotlib)")
        from heddle.clients.plots import POWER_FILE, write_plots
        from heddle.clients.report import summarize

        assert "power" not in write_plots(tmp_path, FCFS, summarize(FCFS, WINDOW_S))
        with_energy = [dataclasses.replace(r, extra={"energy_j": 1.5}) for r in FCFS]
        paths = write_plots(tmp_path, with_energy, summarize(with_energy, WINDOW_S))
        assert paths["power"] == tmp_path / POWER_FILE
        assert paths["power"].read_bytes()[:4] == b"\x89PNG"


def test_summary_has_the_scheduler_tiny_model_and_perf_analyzer_tables(tmp_path: Path) -> None:
    """SUMMARY.md's sections 4-6 come from sched_cost.json, tiny_vs_triton.json and perf_analyzer.json
    (real results of 2026-12-03), a row per policy, comparison and (model, concurrency)."""
    results = Path(__file__).resolve().parents[2] / "bench" / "results" / "2026-12-03"
    shutil.copy(results / "sched_cost.json", tmp_path / summary.SCHED_JSON)
    shutil.copy(results / "tiny_batching.json", tmp_path / summary.TINY_JSON)
    shutil.copy(results / "perf_analyzer_quick.json", tmp_path / summary.PERF_JSON)
    text = summary.build(tmp_path, plot=False).read_text()
    sched = json.loads((tmp_path / summary.SCHED_JSON).read_text())
    twill_trace = sched["trace"]["twill"]
    assert "| twill | " in text
    assert f"| {twill_trace['us_per_request']:.0f} | {twill_trace['ratio_to_edf']:.2f} |" in text
    tiny = json.loads((tmp_path / summary.TINY_JSON).read_text())["median_ratios"]["heddle/triton c=8"]
    assert f"| heddle/triton c=8 | {tiny['p50_ms']:.2f} | {tiny['throughput_rps']:.2f} |" in text
    perf = json.loads((tmp_path / summary.PERF_JSON).read_text())
    heddle_c1 = next(r for r in perf["runs"] if r["target"] == "heddle")["rows"][0]["throughput_infer_per_s"]
    assert f"| cnn | 1 | {heddle_c1:.0f} |" in text
    assert "Not run (no sched_cost.json)" not in text
