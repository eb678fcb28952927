"""`heddle top --once` against a real gateway: it reads the metrics endpoint and ListDevices /
GetPolicy over gRPC, and shows the requests served while it watched."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.server.cli import main
from heddle.server.config.builder import document, python_device


def _config():
    return parse_test_document(document(devices=[python_device("py0", slots=2)],
                                        models=[py_model("tail", "stage_fns:tail")],
                                        pipelines=[chain("echo", ["tail"])]))


@pytest.mark.slow
def test_top_once_shows_devices_policy_and_the_pipeline_served_meanwhile(capsys: pytest.CaptureFixture[str]) -> None:
    """Requests flowing while top watches: the pipeline's row has a rate and no errors, the device
    row its health and slots, the header the policy in force."""
    with running_server(_config()) as running:
        stop = threading.Event()
        served = []

        def load() -> None:
            with running.client() as client:
                while not stop.is_set():
                    served.append(client.infer("echo", {"x": np.ones(4, np.float32)}))

        thread = threading.Thread(target=load)
        thread.start()
        try:
            code = main(["top", "--once", "--interval", "0.5", "--target", running.target,
                         "--metrics", running.metrics_url])
        finally:
            stop.set()
            thread.join()
    out = capsys.readouterr().out
    assert code == 0 and served
    assert f"policy {running.server.config.server.policy}" in out
    device = next(line for line in out.splitlines() if line.startswith("py0"))
    assert device.split()[:3] == ["py0", "cpu", "up"] and device.split()[3].endswith("/2")  # running/slots
    pipeline = next(line for line in out.splitlines() if line.startswith("echo"))
    rate, errors = float(pipeline.split()[1]), float(pipeline.split()[2])
    assert rate > 0 and errors == 0.0


def test_top_says_when_the_metrics_endpoint_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong --metrics URL: one line naming it, exit 1, no traceback."""
    with running_server(_config()) as running:
        code = main(["top", "--once", "--interval", "0.1", "--target", running.target,
                     "--metrics", "http://127.0.0.1:9/metrics"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot read metrics at http://127.0.0.1:9/metrics" in err and "Traceback" not in err
