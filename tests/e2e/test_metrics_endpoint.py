"""The Prometheus endpoint of a real gateway: /metrics only (other paths 404), each series once, and no
`*_created` series beside the counters and histograms; requests over the HTTP port are counted there."""

from __future__ import annotations

import collections
import urllib.error
import urllib.request

import pytest
from http_fixtures import http_json
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    default_config,
    default_server,
    heddle_cache_dir,
)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/", "/favicon.ico", "/anything?x=1"])
def test_paths_other_than_metrics_are_404(default_server: RunningServer, path: str) -> None:
    """Only /metrics serves the metrics; any other path is 404 saying where they are."""
    status, body = get(default_server.metrics_url.replace("/metrics", path))
    assert status == 404 and "/metrics" in body


def test_every_series_once_and_no_created_series(default_server: RunningServer) -> None:
    """Each family is declared once, each series (name and labels) appears once, and no `_created`
    series doubles a counter or histogram; an HTTP request shows in heddle_requests_total."""
    reply = http_json(default_server, "/v2/models/cnn/infer", {"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * 12288}]})
    assert reply.status == 200
    status, text = get(default_server.metrics_url)
    assert status == 200
    lines = text.splitlines()
    families = collections.Counter(line.split()[2] for line in lines if line.startswith("# TYPE "))
    assert [f for f, n in families.items() if n > 1] == []
    series = collections.Counter(line.rsplit(" ", 1)[0] for line in lines if line and not line.startswith("#"))
    assert [s for s, n in series.items() if n > 1] == []
    assert [s for s in series if "_created" in s.split("{")[0]] == []
    assert any(s.startswith('heddle_requests_total{pipeline="cnn"') for s in series), sorted(series)[:20]
