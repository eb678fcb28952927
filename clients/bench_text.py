"""What `heddle bench` prints: the summary table (per app, per priority class, overall), the LLM
timings and energy below it, and a shipped scenario's apps for --list-scenarios.

Apart from bench_cli.py, which owns running the load and writing the report folder: this is
text formatting of a summary dict, the same for a fresh run and a --rebuild.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app_line", "summary_text"]


def app_line(app: Any) -> str:
    deadline = f"{app.deadline_ms:g} ms" if app.deadline_ms else "no deadline"
    rate = {"closed": f"{app.concurrency} in flight, think {app.think_ms:g} ms",
            "burst": f"{app.burst_size} at once, {app.rate_hz:g} bursts/s",
            "periodic": f"{app.rate_hz:g}/s x {app.streams} stream(s), jitter {app.jitter_ms:g} ms",
            }.get(app.arrival, f"{app.rate_hz:g}/s")
    llm = (", streamed" if app.stream else "") + (f", {app.max_new_tokens} tokens" if app.max_new_tokens else "")
    return f"{app.name}: {app.pipeline}, priority {app.priority}, {deadline}, {app.arrival} {rate}{llm}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_text(summary: dict[str, Any]) -> str:
    headers = ("app", "ok/sent", "thr/s", "good/s", "viol", "p50 ms", "p99 ms", "errors")
    rows = []
    for name, s in [*summary["apps"].items(), *((f"priority {p}", s) for p, s in summary["classes"].items()),
                    ("all", summary["total"])]:
        lat = s["latency_ms"] or {}
        errors = ", ".join(f"{k} {v}" for k, v in s["status_counts"].items() if k != "OK") or "-"
        rows.append((name, f"{s['ok']}/{s['requests']}", _fmt(s["throughput_rps"], ".1f"),
                     _fmt(s["goodput_rps"], ".1f"),
                     "-" if s["violation_rate"] is None else f"{100 * s['violation_rate']:.1f}%",
                     _fmt(lat.get("p50"), ".2f"), _fmt(lat.get("p99"), ".2f"), errors))
    text = f"window {summary['window_s']:.1f} s\n" + _text_table(headers, rows)
    llm = [(name, s["llm"]) for name, s in [*summary["apps"].items(), ("all", summary["total"])] if s["llm"]]
    if llm:
        rows = [(name, str(g["requests"]), f"{g['tokens']:.0f}", _fmt(g["tokens_per_s"], ".1f"), *_timings(g))
                for name, g in llm]
        text += "\n\nLLM\n" + _text_table(("app", "gens", "tokens", "tok/s", "TTFT p50 ms", "TTFT p99 ms",
                                            "TPOT p50 ms", "timed by"), rows)
    energy = summary["total"]["energy"]
    if energy:
        text += f"\n\nenergy: {energy['mean_j']:.3f} J per request ({energy['label']})"
    return text


def _timings(g: dict[str, Any]) -> tuple[str, str, str, str]:
    """TTFT and TPOT as the server timed them, else (a stream over the OpenAI API) as the client did."""
    by = "server" if g["ttft_ms"] else "client"
    ttft, tpot = (g["ttft_ms"], g["tpot_ms"]) if by == "server" else (g["client_ttft_ms"], g.get("client_tpot_ms"))
    return (_fmt((ttft or {}).get("p50"), ".1f"), _fmt((ttft or {}).get("p99"), ".1f"),
            _fmt((tpot or {}).get("p50"), ".2f"), by)


def _text_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [headers, *rows])
