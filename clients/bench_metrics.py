"""Server-side figures for a bench run from heddle's Prometheus /metrics, scraped before and after.

The client keeps to numpy, grpc and the stubs, so this reads the text exposition format itself
(the subset prometheus_client writes: `name{label="v",...} value` lines and # comments).
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

__all__ = ["Samples", "metrics_delta", "parse_samples", "scrape"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, timeout_s: float = 10.0) -> str:
    """GET a /metrics endpoint; raises OSError (URLError) when it cannot be read."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode("utf-8")


def parse_samples(text: str) -> Samples:
    """{(sample name, frozenset of (label, value)): value} for every sample line."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                          for k, v in _LABEL.findall(labels or ""))
        try:
            samples[(name, pairs)] = float(value)
        except ValueError:
            continue
    return samples


def _delta(before: Samples, after: Samples, name: str) -> dict[frozenset, float]:
    return {labels: value - before.get((n, labels), 0.0)
            for (n, labels), value in after.items() if n == name}


def _per_stage(before: Samples, after: Samples, family: str) -> dict[str, dict[str, float]]:
    sums, counts = _delta(before, after, f"{family}_sum"), _delta(before, after, f"{family}_count")
    out: dict[str, dict[str, float]] = {}
    for labels, count in counts.items():
        if count <= 0:
            continue
        d = dict(labels)
        key = "/".join(d[k] for k in ("pipeline", "stage", "device") if k in d)
        out[key] = {"count": count, "mean_ms": sums.get(labels, 0.0) / count * 1e3}
    return dict(sorted(out.items()))


def metrics_delta(before_text: str, after_text: str) -> dict[str, Any]:
    """What the server counted during the run: per-stage queue and compute means, requests by status."""
    before, after = parse_samples(before_text), parse_samples(after_text)
    requests: dict[str, float] = {}
    for labels, n in _delta(before, after, "heddle_requests_total").items():
        if n > 0:
            d = dict(labels)
            requests[f"{d.get('pipeline', '')}/{d.get('status', '')}"] = n
    return {
        "source": "heddle /metrics (after - before the run)",
        "stage_queue": _per_stage(before, after, "heddle_stage_queue_seconds"),
        "stage_compute": _per_stage(before, after, "heddle_stage_compute_seconds"),
        "requests": dict(sorted(requests.items())),
    }

