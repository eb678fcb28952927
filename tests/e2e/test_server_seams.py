"""HeddleServer takes its executors and clock from the caller (heddle.server.testing): a plain
function serves a pipeline over real gRPC, and executors that do not match the devices are refused."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.server.app import HeddleServer
from heddle.server.config.builder import document, python_device
from heddle.server.testing import FakeClock, function_executors


def _config():
    return parse_test_document(document(devices=[python_device("py0")],
                                        models=[py_model("tail", "stage_fns:tail")],
                                        pipelines=[chain("p", ["tail"])]))


def test_a_function_executor_serves_a_pipeline_over_grpc() -> None:
    """A request to a gateway built with a function executor gets the function's outputs, and the
    function saw the request's inputs."""
    config = _config()

    def triple(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 3}

    executors = function_executors(config.devices, triple)
    with running_server(config, executors=executors, clock=FakeClock(100.0)) as running, running.client() as client:
        result = client.infer("p", {"x": np.array([1.0, 2.0], np.float32)})
    assert result.outputs["y"].tolist() == [3.0, 6.0]
    assert [(model, inputs["x"].tolist()) for model, inputs in executors["py0"].calls] == [("tail", [1.0, 2.0])]


def test_executors_that_do_not_match_the_devices_are_refused() -> None:
    """Executors for a device the config lacks, or none for one it has, are a ValueError naming both."""
    config = _config()
    other = parse_test_document(document(devices=[python_device("py9")], models=[py_model("tail", "stage_fns:tail")],
                                         pipelines=[chain("p", ["tail"])]))
    with pytest.raises(ValueError, match=r"missing \['py0'\], not configured \['py9'\]"):
        HeddleServer(config, executors=function_executors(other.devices, lambda model, inputs: {}))
