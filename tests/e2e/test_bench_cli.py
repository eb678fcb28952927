"""`heddle bench` end to end against a real gateway: report files, figures recomputed from records, Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    REPO_ROOT,
    RunningServer,
    default_config,
    default_server,
    heddle_cache_dir,
    scrape_metrics,
    wait_until,
)

from heddle.clients.bench_cli import STARTED_LINE
from heddle.clients.plots import PLOT_FILES, plots_available
from heddle.clients.report import read_records, summarize
from heddle.server.cli import main

RAW_FILES = ("run.json", "requests.jsonl", "summary.json", "summary.csv", "report.html")


def _load(out: Path) -> tuple[dict, list[dict], dict]:
    run = json.loads((out / "run.json").read_text())
    raw = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return run, raw, json.loads((out / "summary.json").read_text())


def _recompute(raw: list[dict], window_s: float) -> dict:
    """The headline figures of one group, straight from the JSON lines (no heddle code)."""
    finished = [r for r in raw if not r["client_cancelled"]]
    ok = [r for r in finished if r["status"] == "OK"]
    good = [r for r in ok if not r["server_deadline_missed"]
            and (r["deadline_ms"] is None or r["latency_ms"] <= r["deadline_ms"])]
    dl = [r for r in finished if r["deadline_ms"] is not None]
    dl_good = [r for r in good if r["deadline_ms"] is not None]
    lat = [r["latency_ms"] for r in ok]
    gens = [r for r in ok if "tokens" in r["extra"]]
    ttft = [r["extra"]["ttft_ms"] for r in gens if "ttft_ms" in r["extra"]]  # none over the OpenAI API
    client_ttft = [r["extra"]["client_ttft_ms"] for r in gens if "client_ttft_ms" in r["extra"]]
    tpot = [r["extra"]["tpot_ms"] for r in gens if r["extra"]["tokens"] > 1 and "tpot_ms" in r["extra"]]
    metered = [r for r in ok if "energy_j" in r["extra"]]
    refused = [r for r in finished if r["status"] == "RESOURCE_EXHAUSTED"]
    return {
        "requests": len(raw), "ok": len(ok), "errors": len(finished) - len(ok),
        "throughput_rps": len(ok) / window_s, "goodput_rps": len(good) / window_s,
        "violation_rate": (len(dl) - len(dl_good)) / len(dl) if dl else None,
        "p50": float(np.percentile(lat, 50)) if lat else None,
        "p99": float(np.percentile(lat, 99)) if lat else None,
        "max": max(lat) if lat else None,
        "tokens_per_s": sum(r["extra"]["tokens"] for r in gens) / window_s if gens else None,
        "ttft_p50": float(np.percentile(ttft, 50)) if ttft else None,
        "ttft_p99": float(np.percentile(ttft, 99)) if ttft else None,
        "client_ttft_p50": float(np.percentile(client_ttft, 50)) if client_ttft else None,
        "tpot_p50": float(np.percentile(tpot, 50)) if tpot else None,
        "request_tps_max": max((r["extra"]["tokens"] * 1e3 / r["latency_ms"] for r in gens), default=None),
        "energy_mean_j": float(np.mean([r["extra"]["energy_j"] for r in metered])) if metered else None,
        "refused_with_hint": sum(r["retry_after_ms"] is not None for r in refused),
    }


def _figures(stats: dict) -> dict:
    lat, llm, energy = stats["latency_ms"] or {}, stats["llm"] or {}, stats["energy"] or {}
    refused = stats["rejections"].get("RESOURCE_EXHAUSTED", {})
    return {k: stats[k] for k in ("requests", "ok", "errors", "throughput_rps", "goodput_rps",
                                  "violation_rate")} | {k: lat.get(k) for k in ("p50", "p99", "max")} | {
        "tokens_per_s": llm.get("tokens_per_s"),
        "ttft_p50": (llm.get("ttft_ms") or {}).get("p50"), "ttft_p99": (llm.get("ttft_ms") or {}).get("p99"),
        "client_ttft_p50": (llm.get("client_ttft_ms") or {}).get("p50"),
        "tpot_p50": (llm.get("tpot_ms") or {}).get("p50"),
        "request_tps_max": (llm.get("request_tokens_per_s") or {}).get("max"),
        "energy_mean_j": energy.get("mean_j"), "refused_with_hint": refused.get("with_retry_hint", 0)}


def _check_report(out: Path) -> tuple[dict, list[dict], dict]:
    """Files exist, counts add up, and every group's figures recompute from requests.jsonl."""
    assert all((out / name).is_file() for name in RAW_FILES)
    run, raw, doc = _load(out)
    summary, window_s = doc["summary"], run["window_s"]
    total = summary["total"]
    assert total["requests"] == len(raw)
    assert sum(s["requests"] for s in summary["apps"].values()) == len(raw)
    assert sum(s["requests"] for s in summary["classes"].values()) == len(raw)
    for s in [*summary["apps"].values(), *summary["classes"].values(), total]:
        assert s["ok"] + s["errors"] + s["unfinished"] == s["requests"]
        assert sum(s["status_counts"].values()) == s["finished"]
    for name, stats in summary["apps"].items():
        assert _figures(stats) == pytest.approx(_recompute([r for r in raw if r["app"] == name], window_s))
    for priority, stats in summary["classes"].items():
        group = [r for r in raw if str(r["priority"]) == priority]
        assert _figures(stats) == pytest.approx(_recompute(group, window_s))
    assert _figures(total) == pytest.approx(_recompute(raw, window_s))
    # And exactly what the library computes from the saved file, to the last bit.
    apps = [a["name"] for a in run["scenario"]["apps"]]
    assert summarize(read_records(out / "requests.jsonl"), window_s, apps) == summary
    return run, raw, doc


@pytest.mark.slow
def test_bench_writes_a_report_whose_figures_recompute(default_server: RunningServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture):
    """A 3 s default-scenario run writes every file; figures recompute (LLM ones included: the
    default mix streams chat replies) and match the server's counts."""
    out = tmp_path / "report"
    rc = main(["bench", "--target", default_server.target, "--duration", "3", "--out", str(out),
               "--metrics", default_server.metrics_url, "--seed", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    run, raw, doc = _check_report(out)
    assert not run["interrupted"] and run["window_s"] == 3.0
    assert {r["app"] for r in raw} == {a["name"] for a in run["scenario"]["apps"]}
    chat = [r for r in raw if r["pipeline"] == "chat" and r["status"] == "OK"]
    assert chat and all(0 < r["extra"]["tokens"] <= 32 and "client_ttft_ms" in r["extra"] for r in chat)
    assert doc["summary"]["apps"]["chat replies"]["llm"]["tokens_per_s"] > 0
    if plots_available():
        assert all((out / f).read_bytes()[:4] == b"\x89PNG" for f in PLOT_FILES.values())
    # The server counted exactly the OK responses the client recorded, per pipeline.
    server_ok = {k.split("/")[0]: v for k, v in doc["server_metrics"]["requests"].items() if k.endswith("/OK")}
    client_ok = {p: sum(r["status"] == "OK" for r in raw if r["pipeline"] == p) for p in server_ok}
    assert server_ok == client_ok
    assert "report:" in captured.out and "all " in captured.out  # the summary table and the paths
    if importlib.util.find_spec("rich") is not None:
        assert "sent" in captured.err  # the progress bar's final line
    before = (out / "summary.json").read_bytes()
    assert main(["bench", "--rebuild", str(out)]) == 0
    assert (out / "summary.json").read_bytes() == before


@pytest.mark.slow
def test_bench_over_http_reports_ttft_and_tokens_per_s(default_server: RunningServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    """The default scenario against the HTTP port (KServe REST; the chat replies streamed through the
    OpenAI API): every request answered by the server, the report recomputes, chat records carry tokens and the client's
    TTFT and TPOT (the API reports no server timings), and the server counted what the client did."""
    out = tmp_path / "report"
    rc = main(["bench", "--target", f"http://127.0.0.1:{default_server.server.http_port}", "--duration", "3",
               "--out", str(out), "--metrics", default_server.metrics_url, "--seed", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    run, raw, doc = _check_report(out)
    assert run["protocol"] == "http" and run["target"].startswith("http://")
    # Refusals and missed deadlines are the server's answers under load; nothing the client failed to read.
    assert raw and {r["status"] for r in raw if not r["client_cancelled"]} <= {"OK", "DEADLINE_EXCEEDED",
                                                                              "RESOURCE_EXHAUSTED"}
    chat = [r for r in raw if r["pipeline"] == "chat" and r["status"] == "OK"]
    assert chat and all(0 < r["extra"]["tokens"] <= 32 and "client_ttft_ms" in r["extra"]
                        and "ttft_ms" not in r["extra"] for r in chat)
    llm = doc["summary"]["apps"]["chat replies"]["llm"]
    assert llm["tokens_per_s"] > 0 and llm["client_ttft_ms"]["p50"] > 0 and llm["ttft_ms"] is None
    assert any("client_tpot_ms" in r["extra"] for r in chat)
    server_ok = {k.split("/")[0]: v for k, v in doc["server_metrics"]["requests"].items() if k.endswith("/OK")}
    assert server_ok == {p: sum(r["status"] == "OK" for r in raw if r["pipeline"] == p) for p in server_ok}
    assert "timed by" in captured.out and "client" in captured.out


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_partial_results(default_server: RunningServer, tmp_path: Path):
    """SIGINT to a running `heddle bench` ends it with 130 and a report of what ran, recomputable."""
    def served() -> float:
        return sum(v for (name, _), v in scrape_metrics(default_server.metrics_url).items()
                   if name == "heddle_requests_total")

    baseline = served()
    out = tmp_path / "partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", "heddle.server.cli", "bench", "--target", default_server.target,
         "--duration", "120", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        seen = []
        while (line := proc.stderr.readline()) and line.strip() != STARTED_LINE:  # '' = it died
            seen.append(line)
        assert line, "".join(seen)
        wait_until(lambda: served() >= baseline + 5, "the bench's first requests")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "report:" in stdout
    run, raw, _ = _check_report(out)
    assert run["interrupted"] and run["window_s"] < 120 and len(raw) >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestErrors:
    def test_bad_scenario_file_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture):
        """A scenario file with an unknown arrival exits 2 and says why."""
        path = tmp_path / "bad.toml"
        path.write_text('[[apps]]\nname = "x"\npipeline = "p"\narrival = "often"\n')
        assert main(["bench", "--scenario", str(path)]) == 2
        assert "not one of" in capsys.readouterr().err

    def test_unknown_pipeline_exits_1_before_sending(self, default_server: RunningServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture):
        """A scenario naming a pipeline the server lacks exits 1, names it, and writes no report."""
        path = tmp_path / "s.toml"
        path.write_text('[[apps]]\nname = "x"\npipeline = "nope"\narrival = "closed"\n')
        out = tmp_path / "out"
        assert main(["bench", "--target", default_server.target, "--scenario", str(path),
                     "--out", str(out)]) == 1
        assert "'nope'" in capsys.readouterr().err and not out.exists()

    def test_unreachable_server_exits_1(self, tmp_path: Path, capsys: pytest.CaptureFixture):
        """No server at the target: exit 1 with the gRPC status."""
        assert main(["bench", "--target", f"127.0.0.1:{_free_port()}", "--out", str(tmp_path / "o")]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err

    def test_list_scenarios(self, capsys: pytest.CaptureFixture):
        """--list-scenarios prints every shipped scenario and its apps."""
        assert main(["bench", "--list-scenarios"]) == 0
        text = capsys.readouterr().out
        for name in ("default", "video_conferencing", "ar_assistant", "gaming", "camera_analytics"):
            assert f"{name}:" in text
        assert "segmentation 30 FPS" in text
