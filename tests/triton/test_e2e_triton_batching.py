"""Dynamic batching on a Triton device: heddle joins the requests of a pass into one Triton call,
and each request gets exactly the outputs it gets run alone (ONNX Runtime on the same file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import RunningServer, parse_test_config, running_server, scrape_metrics
from test_e2e_batching import ATOL, BATCH, ROWS, RTOL, make_inputs, reference, send_together
from triton_fixtures import (  # noqa: F401  (fixtures are found by name)
    ZOO_ON_TRITON,
    triton_server,
    triton_zoo_paths,
)

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def batching_on_triton(triton_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = "".join(f'''
[[models]]
name = "{name}_t"
backend = "triton"
triton_model = "{name}"
devices = ["triton0"]
max_batch = {BATCH + 1}
preferred_batch_sizes = [{BATCH}]
max_queue_delay_us = 5000000
''' for name in ZOO_ON_TRITON)
    text = f'''
[[devices]]
id = "triton0"
kind = "remote"
backend = "triton"
url = "{triton_server.grpc_url}"
slots = 1
{models}'''
    config = parse_test_config(text, cache_dir=str(tmp_path_factory.mktemp("cache")))
    with running_server(config) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("model", ZOO_ON_TRITON)
def test_batched_outputs_on_triton_equal_each_request_run_alone(batching_on_triton, triton_zoo_paths: dict[str, Path],
                                                               model):
    """Four requests (five rows) of a zoo model on Triton run as one pass, one Triton call, and
    each gets the outputs ONNX Runtime gives it run alone."""
    server = batching_on_triton
    spec = server.server.config.models[f"{model}_t"]
    local = type(spec)(spec.name, "onnxruntime", str(triton_zoo_paths[model]), spec.inputs, spec.outputs)
    requests = [make_inputs(spec, rows, seed) for seed, rows in enumerate(ROWS)]
    labels = frozenset({("model", f"{model}_t"), ("device", "triton0"), ("le", "8.0")})
    before = scrape_metrics(server.metrics_url).get(("heddle_batch_size_bucket", labels), 0.0)
    client = tgrpc.InferenceServerClient(server.target)
    try:
        answers = send_together(client, f"{model}_t", requests, spec)
    finally:
        client.close()
    for inputs, (result, error) in zip(requests, answers, strict=True):
        assert error is None, error
        for name, want in reference(local, inputs).items():
            np.testing.assert_allclose(result.as_numpy(name), want, rtol=RTOL, atol=ATOL, err_msg=f"{model}.{name}")
    assert scrape_metrics(server.metrics_url)[("heddle_batch_size_bucket", labels)] == before + 1
