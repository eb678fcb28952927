"""Samples a server process while a benchmark loads it: RSS, threads and open file descriptors
from /proc, and heddle's in-flight and queue gauges from /metrics, on a thread of its own (the
bench's event loop may be saturated by its own load). Used by overload.py and soak.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heddle.clients.bench_metrics import parse_samples, scrape

__all__ = ["GAUGES", "Sampler", "gauges", "process_figures", "sample", "series_summary", "slope_per_hour"]

# What each sample reads from heddle's /metrics: summed over labels (devices, priorities).
GAUGES = {
    "in_flight": "heddle_requests_in_flight",  # requests submitted and not answered
    "queued": "heddle_device_queue_length",  # stage runs waiting for a device
    "running": "heddle_device_running",  # stage runs on a device now
    "llm_live": "heddle_llm_live_sequences",  # generations holding a KV cache
    "frozen": "heddle_frozen_tasks",  # stage runs held (power, policy)
}


def process_figures(pid: int) -> dict[str, float | None]:
    """RSS (MB), threads and open fds of a process from /proc; None where it cannot be read."""
    out: dict[str, float | None] = {"rss_mb": None, "threads": None, "fds": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return out


def gauges(metrics_url: str, timeout_s: float = 5.0) -> dict[str, float | None]:
    """heddle's gauges now, each summed over its labels; None for all when /metrics cannot be read."""
    try:
        samples = parse_samples(scrape(metrics_url, timeout_s))
    except OSError:
        return {key: None for key in GAUGES}
    return {key: sum(v for (n, _), v in samples.items() if n == name) for key, name in GAUGES.items()}


def sample(pid: int, metrics_url: str, t0: float) -> dict[str, Any]:
    return {"t_s": time.monotonic() - t0, **process_figures(pid), **gauges(metrics_url)}


class Sampler:
    """Samples every period_s from start() to stop(); `samples` holds them, times since start."""

    def __init__(self, pid: int, metrics_url: str, period_s: float) -> None:
        self.pid, self.url, self.period_s = pid, metrics_url, period_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> Sampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            self.samples.append(sample(self.pid, self.url, self.t0))
            next_s += self.period_s
            self._stop.wait(max(0.0, next_s - time.monotonic()))


def slope_per_hour(t_s: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of values over time, per hour; None with fewer than 2 points."""
    if len(values) < 2 or max(t_s) - min(t_s) <= 0:
        return None
    slope_per_s = np.polyfit(np.asarray(t_s, dtype=float), np.asarray(values, dtype=float), 1)[0]
    return float(slope_per_s * 3600.0)


def series_summary(samples: Sequence[dict[str, Any]], key: str) -> dict[str, float | None]:
    """first, last, min, max and slope per hour of one sampled figure (samples where it was read)."""
    points = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if not points:
        return {"samples": 0, "first": None, "last": None, "min": None, "max": None, "slope_per_h": None}
    t, v = zip(*points, strict=True)
    return {"samples": len(v), "first": v[0], "last": v[-1], "min": min(v), "max": max(v),
            "slope_per_h": slope_per_hour(t, v)}
