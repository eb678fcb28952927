"""Bench reports: figures from records by hand, files that round-trip, plots, HTML, /metrics deltas."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from heddle.clients.bench_metrics import metrics_delta, parse_samples
from heddle.clients.html_report import render_html, write_html
from heddle.clients.loadgen import RequestRecord
from heddle.clients.report import (
    csv_rows,
    deadline_met,
    read_records,
    summarize,
    write_csv,
    write_records,
)

WINDOW_S = 2.0


def rec(app: str, status: str = "OK", latency_ms: float = 10.0, *, priority: int = 1,
        deadline_ms: float | None = None, missed: bool = False, cancelled: bool = False,
        seq: int = 0, extra: dict | None = None) -> RequestRecord:
    ok = status == "OK"
    return RequestRecord(
        app=app, pipeline="p", priority=priority, deadline_ms=deadline_ms, seq=seq,
        request_id=f"{app}-{seq}", scheduled_s=0.1 * seq, sent_s=0.1 * seq + 0.001,
        latency_ms=latency_ms, status=status, client_cancelled=cancelled,
        server_total_ms=latency_ms - 2.0 if ok else None, server_deadline_missed=missed,
        queue_ms=1.0 if ok else None, compute_ms=latency_ms - 4.0 if ok else None,
        extra=extra or {})


def sample_records() -> list[RequestRecord]:
    """A camera app with a 20 ms deadline (1 met, 3 violations, 1 stopped) and a deadline-less batch."""
    cam = dict(priority=4, deadline_ms=20.0)
    return [
        rec("cam", "OK", 10.0, seq=0, **cam),                     # met
        rec("cam", "OK", 30.0, seq=1, **cam),                     # late on the client's clock
        rec("cam", "OK", 15.0, seq=2, missed=True, **cam),        # the server says late
        rec("cam", "DEADLINE_EXCEEDED", 20.0, seq=3, **cam),      # shed by the server
        rec("cam", "CANCELLED", 5.0, seq=4, cancelled=True, **cam),  # stopped by the bench
        rec("batch", "OK", 40.0, seq=0),                          # no deadline: counts as met
        rec("batch", "RESOURCE_EXHAUSTED", 1.0, seq=1),
    ]


class TestSummary:
    def test_figures_match_the_definitions(self):
        """Counts, violation rate, throughput, goodput and latency follow the documented rules."""
        s = summarize(sample_records(), WINDOW_S, ["cam", "batch"])
        cam, batch, total = s["apps"]["cam"], s["apps"]["batch"], s["total"]
        assert (cam["requests"], cam["finished"], cam["unfinished"], cam["ok"], cam["errors"]) == (5, 4, 1, 3, 1)
        assert cam["status_counts"] == {"DEADLINE_EXCEEDED": 1, "OK": 3}
        assert (cam["with_deadline"], cam["deadline_met"], cam["deadline_violations"]) == (4, 1, 3)
        assert cam["violation_rate"] == 0.75
        assert (cam["throughput_rps"], cam["goodput_rps"]) == (1.5, 0.5)
        assert cam["latency_ms"] == {"p50": 15.0, "p90": pytest.approx(27.0), "p99": pytest.approx(29.7),
                                     "max": 30.0, "mean": pytest.approx(55.0 / 3)}
        assert cam["queue_ms_mean"] == 1.0 and cam["client_overhead_ms_mean"] == pytest.approx(2.0)
        assert batch["violation_rate"] is None and batch["goodput_rps"] == 0.5
        assert batch["status_counts"] == {"OK": 1, "RESOURCE_EXHAUSTED": 1}
        assert (total["requests"], total["ok"], total["goodput_rps"]) == (7, 4, 1.0)
        assert list(s["classes"]) == ["4", "1"] and s["classes"]["4"]["ok"] == 3
        assert [r.app for r in sample_records() if deadline_met(r)] == ["cam", "batch"]

    def test_an_app_without_records_has_empty_figures(self):
        """An app that sent nothing appears with zero counts and no latency, and the CSV still writes."""
        s = summarize([], 1.0, ["idle"])
        assert s["apps"]["idle"]["requests"] == 0 and s["apps"]["idle"]["latency_ms"] is None
        assert csv_rows(s)[0]["latency_ms_p99"] is None

    def test_extra_figures_are_summarised_only_when_present(self):
        """Numeric keys in records' `extra` get p50/p99/mean; without them nothing is invented."""
        records = [rec("llm", seq=i, extra={"kv_blocks": float(i)}) for i in range(5)] + [rec("cnn")]
        s = summarize(records, 1.0)
        assert s["apps"]["llm"]["extra"]["kv_blocks"]["p50"] == 2.0
        assert s["apps"]["cnn"]["extra"] == {}
        assert csv_rows(s)[0]["kv_blocks_mean"] == 2.0
        assert s["apps"]["llm"]["llm"] is None and s["apps"]["llm"]["energy"] is None

    def test_llm_figures_follow_the_definitions(self):
        """Tokens/s over the window, TTFT/TPOT distributions and per-request tokens/s, OK only."""
        s = summarize(llm_records(), WINDOW_S, ["chat", "cam"])
        chat = s["apps"]["chat"]["llm"]
        assert (chat["requests"], chat["tokens"], chat["tokens_per_s"]) == (3, 41.0, 20.5)
        assert chat["ttft_ms"]["p50"] == 20.0 and chat["ttft_ms"]["max"] == 30.0
        assert chat["client_ttft_ms"] == {"p50": 25.0, "p90": pytest.approx(29.0), "p99": pytest.approx(29.9),
                                          "max": 30.0, "mean": 25.0}  # the unstreamed one has none
        assert chat["tpot_ms"]["mean"] == 3.0  # the 1-token generation has no interval: left out
        assert chat["request_tokens_per_s"]["max"] == 250.0  # 25 tokens in 100 ms
        assert s["apps"]["cam"]["llm"] is None
        assert s["classes"]["2"]["llm"] == chat and s["total"]["llm"]["tokens"] == 41.0

    def test_energy_is_labelled_estimated_unless_every_request_was_measured(self):
        """Mean and total joules per OK request, joules per token, and the weakest source's label."""
        s = summarize(llm_records(), WINDOW_S, ["chat", "cam"])
        chat, cam = s["apps"]["chat"]["energy"], s["apps"]["cam"]["energy"]
        assert chat["label"] == "estimated" and chat["requests"] == 3
        assert chat["mean_j"] == pytest.approx(0.5) and chat["total_j"] == pytest.approx(1.5)
        assert chat["j_per_token"] == pytest.approx(1.5 / 41)
        assert (cam["label"], cam["mean_j"], cam["j_per_token"]) == ("measured", 2.0, None)
        assert s["total"]["energy"]["label"] == "estimated"

    def test_rejections_count_retry_hints_per_status(self):
        """Errors per status with how many carried a retry hint and the hints' distribution."""
        s = summarize(llm_records(), WINDOW_S, ["chat", "cam"])
        assert s["apps"]["chat"]["rejections"] == {
            "RESOURCE_EXHAUSTED": {"count": 3, "with_retry_hint": 2, "retry_after_ms": {
                "p50": 150.0, "p90": pytest.approx(190.0), "p99": pytest.approx(199.0), "max": 200.0,
                "mean": 150.0}},
            "UNAVAILABLE": {"count": 1, "with_retry_hint": 0, "retry_after_ms": None}}
        assert s["apps"]["cam"]["rejections"] == {}


def llm_records() -> list[RequestRecord]:
    """Three OK generations (one streamed twice, one of one token), refusals with and without a
    retry hint, and a camera app whose energy was measured."""
    chat = dict(priority=2, deadline_ms=1000.0)

    def gen(seq: int, latency_ms: float, tokens: float, ttft: float, tpot: float, client_ttft: float | None):
        extra = {"tokens": tokens, "ttft_ms": ttft, "tpot_ms": tpot, "energy_j": 0.5, "energy_estimated": 1.0}
        if client_ttft is not None:
            extra["client_ttft_ms"] = client_ttft
        return rec("chat", "OK", latency_ms, seq=seq, extra=extra, **chat)

    refused = [rec("chat", "RESOURCE_EXHAUSTED", 1.0, seq=3 + i, **chat) for i in range(3)]
    refused[0].retry_after_ms, refused[1].retry_after_ms = 100.0, 200.0
    return [gen(0, 100.0, 25.0, 20.0, 3.0, 20.0), gen(1, 200.0, 15.0, 30.0, 3.0, 30.0),
            gen(2, 50.0, 1.0, 10.0, 0.0, None), *refused,
            rec("chat", "UNAVAILABLE", 2.0, seq=6, **chat),
            rec("cam", "OK", 10.0, priority=4, extra={"energy_j": 2.0, "energy_estimated": 0.0})]


class TestFiles:
    def test_records_round_trip_and_recompute_the_summary(self, tmp_path: Path):
        """Records written as JSON lines read back equal, and summarise to the saved summary."""
        records = sample_records()
        write_records(tmp_path / "r.jsonl", records)
        again = read_records(tmp_path / "r.jsonl")
        assert again == records
        saved = json.loads(json.dumps(summarize(records, WINDOW_S, ["cam", "batch"])))
        assert summarize(again, WINDOW_S, ["cam", "batch"]) == saved

    def test_csv_has_one_row_per_group_with_the_summary_figures(self, tmp_path: Path):
        """summary.csv holds app, class and total rows whose cells parse back to the summary values."""
        s = summarize(sample_records(), WINDOW_S, ["cam", "batch"])
        write_csv(tmp_path / "s.csv", s)
        with open(tmp_path / "s.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["group"], r["name"]) for r in rows] == [
            ("app", "cam"), ("app", "batch"), ("class", "4"), ("class", "1"), ("total", "all")]
        cam = rows[0]
        assert float(cam["latency_ms_p99"]) == s["apps"]["cam"]["latency_ms"]["p99"]
        assert int(cam["status_DEADLINE_EXCEEDED"]) == 1 and cam["status_RESOURCE_EXHAUSTED"] == "0"
        assert rows[1]["violation_rate"] == ""  # no deadline: empty, not 0

    def test_csv_carries_llm_energy_and_retry_hint_columns(self, tmp_path: Path):
        """LLM, energy (with its label) and retry-hint cells; empty where a group has none."""
        records = llm_records()
        write_records(tmp_path / "r.jsonl", records)
        assert read_records(tmp_path / "r.jsonl") == records  # retry_after_ms round-trips too
        s = summarize(records, WINDOW_S, ["chat", "cam"])
        write_csv(tmp_path / "s.csv", s)
        with open(tmp_path / "s.csv", newline="") as f:
            rows = {r["name"]: r for r in csv.DictReader(f)}
        chat, cam = rows["chat"], rows["cam"]
        assert float(chat["llm_tokens_per_s"]) == 20.5 and float(chat["llm_ttft_ms_p50"]) == 20.0
        assert float(chat["llm_tpot_ms_p50"]) == 3.0 and cam["llm_tokens"] == ""
        assert (chat["energy_label"], cam["energy_label"]) == ("estimated", "measured")
        assert float(chat["energy_mean_j"]) == pytest.approx(0.5)
        assert chat["retry_hint_RESOURCE_EXHAUSTED"] == "2" and chat["retry_after_ms_p50_RESOURCE_EXHAUSTED"] == "150.0"
        assert "ttft_ms_p50" not in chat  # covered by the llm columns, not repeated raw


class TestMetricsDelta:
    def test_per_stage_means_and_requests_come_from_the_difference(self):
        """Queue/compute means and request counts are computed from after minus before."""
        before = ('heddle_stage_queue_seconds_sum{pipeline="p",stage="a"} 1.0\n'
                  'heddle_stage_queue_seconds_count{pipeline="p",stage="a"} 10\n'
                  'heddle_requests_total{pipeline="p",status="OK"} 10\n')
        after = ('# HELP ignored\nheddle_stage_queue_seconds_sum{pipeline="p",stage="a"} 1.5\n'
                 'heddle_stage_queue_seconds_count{pipeline="p",stage="a"} 20\n'
                 'heddle_stage_compute_seconds_sum{pipeline="p",stage="a",device="d"} 0.2\n'
                 'heddle_stage_compute_seconds_count{pipeline="p",stage="a",device="d"} 10\n'
                 'heddle_requests_total{pipeline="p",status="OK"} 30\n')
        delta = metrics_delta(before, after)
        assert delta["stage_queue"] == {"p/a": {"count": 10.0, "mean_ms": pytest.approx(50.0)}}
        assert delta["stage_compute"] == {"p/a/d": {"count": 10.0, "mean_ms": pytest.approx(20.0)}}
        assert delta["requests"] == {"p/OK": 20.0}

    def test_label_values_are_unescaped(self):
        """Quotes and backslashes in label values come back as written."""
        samples = parse_samples('m{a="x\\"y",b="c\\\\d"} 2\n')
        assert samples == {("m", frozenset({("a", 'x"y'), ("b", "c\\d")})): 2.0}


def _doc(records: list[RequestRecord], interrupted: bool = False) -> dict:
    apps = [{"name": "cam", "arrival": "periodic", "offered_rps": 30.0, "deadline_ms": 20.0},
            {"name": "chat", "arrival": "poisson", "offered_rps": 2.0, "stream": True, "max_new_tokens": 25},
            {"name": "batch", "arrival": "closed", "offered_rps": None, "concurrency": 2}]
    run = {"scenario": {"name": "t<1>", "description": "d", "apps": apps}, "target": "h:1",
           "seed": 0, "started_at": "now", "interrupted": interrupted, "window_s": WINDOW_S}
    return {"run": run, "summary": summarize(records, WINDOW_S, ["cam", "batch"])}


class TestPlotsAndHtml:
    @pytest.mark.slow
    def test_plots_are_png_files(self, tmp_path: Path):
        """write_plots writes each plot as a PNG file."""
        pytest.importorskip("matplotlib", reason="plots need the bench extra (matplotlib)")
        from heddle.clients.plots import PLOT_FILES, write_plots

        records = sample_records()
        paths = write_plots(tmp_path, records, summarize(records, WINDOW_S, ["cam", "batch"]))
        assert sorted(paths) == sorted(PLOT_FILES)
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths.values())

    def test_html_has_tables_escaped_names_and_embedded_images(self, tmp_path: Path):
        """The page lists every app and class, escapes names, embeds images and flags an interrupted run."""
        image = tmp_path / "x.png"
        image.write_bytes(b"\x89PNG fake")
        html = render_html(_doc(sample_records(), interrupted=True), {"x": image})
        assert "t&lt;1&gt;" in html and "<b>cam</b>" in html and "priority 4" in html
        assert html.count("data:image/png;base64,") == 1 and "Stopped early" in html
        assert "DEADLINE_EXCEEDED" in html and "RESOURCE_EXHAUSTED" in html

    def test_html_shows_llm_energy_and_retry_hints_only_when_records_carry_them(self):
        """The LLM, energy and errors-by-reason sections appear with their figures, and not for
        records without them."""
        html = render_html(_doc(llm_records()))
        assert "<h2>LLM generation" in html and "TTFT ms, server" in html and "<td>20.5</td>" in html
        assert "<h2>Energy per request (estimated" in html and "<td>measured</td>" in html
        assert "<h2>Errors by reason" in html and "<td>150</td>" in html
        assert "LLM tokens /s" in html  # a headline card
        assert "streamed, 25 tokens" in html  # the app's label says how it asked
        plain = render_html(_doc([rec("cam"), rec("batch", seq=1)]))
        assert "<h2>LLM generation" not in plain and "<h2>Energy per request" not in plain
        assert "<h2>Errors by reason" not in plain and "LLM tokens /s" not in plain

    @pytest.mark.slow
    @pytest.mark.skipif(shutil.which("chromium") is None,
                        reason="chromium is not installed (apt-get install -y chromium)")
    def test_html_renders_in_headless_chromium(self, tmp_path: Path):
        """Headless Chromium loads the page with its plots and takes a non-blank screenshot."""
        pytest.importorskip("matplotlib", reason="plots need the bench extra (matplotlib)")
        from matplotlib.image import imread

        from heddle.clients.plots import write_plots

        doc = _doc(sample_records())
        page = write_html(tmp_path / "report.html", doc,
                          write_plots(tmp_path, sample_records(), doc["summary"]))
        shot = tmp_path / "shot.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1800",
                        f"--screenshot={shot}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
        pixels = imread(shot)
        assert pixels.shape[:2] == (1800, 1280)
        rgb = pixels[..., :3].reshape(-1, 3)
        assert np.unique(rgb, axis=0).shape[0] > 50  # text and plots, not a blank or error page
        # matplotlib's first line colour (#1f77b4) appears only if the embedded plots were drawn.
        assert np.any(np.abs(rgb - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=1) < 0.02)
