"""A Triton server that was down when heddle started comes back broken (without the model, then
serving it with other outputs than the config declares): heddle keeps the device out of rotation,
says why, retries with backoff, and takes the device in once the server is fixed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import RunningServer, parse_test_document, running_server, scrape_metrics, wait_until
from test_e2e_triton import (
    CNN_IO,
    WAIT_S,
    assert_outputs,
    classify,
    classify_direct,
    config,
    device_info,
    hosted,
    image_batch,
    local,
    remote,
    stage_devices,
)
from triton_fixtures import require_triton, triton_server, triton_zoo_paths  # noqa: F401  (fixtures)

from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.server import TritonServer, free_port, write_onnx_python_model
from heddle.scheduler.specs import TensorSpec
from heddle.server.runtime.recovery import LoadStatus, backoff_delays

# Each test here starts or talks to a real tritonserver (`make test-fast` leaves them out).
pytestmark = pytest.mark.triton

# Models load only when asked (LoadModel), so the server can be up without the model, then get it.
EXPLICIT = ("--model-control-mode=explicit",)
# Backoff grows to 30 s: a wait that spans retries must outlast one full delay.
RECOVERY_WAIT_S = 90.0


def test_backoff_doubles_from_half_a_second_up_to_its_cap() -> None:
    delays = backoff_delays(0.5, 30.0)
    assert [next(delays) for _ in range(9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def write_cnn(repo: Path, onnx: Path, logits_dims: int = 10) -> None:
    """The CNN as a python-backend model whose config declares logits [-1, logits_dims] (10 is right)."""
    inputs, outputs = read_io_spec(onnx)
    outputs = [TensorSpec(t.name, t.datatype, (-1, logits_dims)) for t in outputs]
    write_onnx_python_model(repo, "cnn", onnx, inputs, outputs)


def load_failures(running: RunningServer, device: str) -> float:
    samples = scrape_metrics(running.metrics_url)
    return sum(v for (name, labels), v in samples.items()
               if name == "heddle_device_load_failures_total" and dict(labels)["device"] == device)


def load_state(running: RunningServer, device: str) -> str:
    """The state heddle_device_load_state reports for the device."""
    samples = scrape_metrics(running.metrics_url)
    (state,) = [dict(labels)["heddle_device_load_state"] for (name, labels), v in samples.items()
                if name == "heddle_device_load_state" and dict(labels)["device"] == device and v == 1.0]
    return state


def recovery_tasks(running: RunningServer, device: str) -> int:
    """Recovery tasks of the device still live on the gateway's loop (not finished nor being cancelled)."""
    async def count() -> int:
        return sum(t.get_name() == f"heddle-recover-{device}" and not t.done() and not t.cancelling()
                   for t in asyncio.all_tasks())
    return asyncio.run_coroutine_threadsafe(count(), running.loop).result(WAIT_S)


def test_server_back_without_the_model_joins_once_it_serves_it(triton_zoo_paths, tmp_path: Path) -> None:
    """triton1 is down at start. Its server comes up without the CNN: triton1 stays out (classify_t
    UNAVAILABLE, the local classify served), heddle retries and says why. It goes down again:
    retrying stops. It comes up serving the CNN with the wrong outputs: still out, the mismatch
    named. The right model is loaded: triton1 joins and serves classify_t."""
    require_triton()
    port, cnn_onnx, repo = free_port(), triton_zoo_paths["cnn"], tmp_path / "repo"
    doc = config(local(cnn_onnx), remote("triton1", f"127.0.0.1:{port}", 1),
                 hosted("cnn_t", "cnn", ["triton1"], CNN_IO), classify("classify_t", "cnn_t"))
    image = image_batch(3)
    expected = classify_direct(cnn_onnx, image)
    write_cnn(repo, cnn_onnx)
    server_args = dict(work_dir=tmp_path / "work", grpc_port=port, extra_args=EXPLICIT)
    with running_server(parse_test_document(doc)) as running, running.client() as client:
        loader = running.server.runtime.loader
        assert load_state(running, "triton1") == "unreachable"
        assert load_state(running, "cpu0") == "loaded"

        with TritonServer(repo, **server_args) as server:  # up, serving nothing
            wait_until(lambda: load_failures(running, "triton1") >= 2, "two failed loads", RECOVERY_WAIT_S)
            missing = loader.status("triton1").error
            assert device_info(client, "triton1").healthy is False
            with pytest.raises(grpc.RpcError) as refused:
                client.infer("classify_t", {"image": image}, timeout_s=WAIT_S)
            assert_outputs(client.infer("classify", {"image": image}, timeout_s=WAIT_S), expected)
            # The watcher reporting the server up again must not start a second recovery.
            for _ in range(3):
                running.loop.call_soon_threadsafe(running.server.runtime.set_device_health, "triton1", True)
            assert recovery_tasks(running, "triton1") == 1
            server.kill()
            wait_until(lambda: load_state(running, "triton1") == "unreachable", "triton1 unreachable", WAIT_S)
            assert recovery_tasks(running, "triton1") == 0

        write_cnn(repo, cnn_onnx, logits_dims=11)
        with TritonServer(repo, **server_args) as server, tgrpc.InferenceServerClient(server.grpc_url) as admin:
            admin.load_model("cnn")  # with the wrong logits
            seen = load_failures(running, "triton1")
            wait_until(lambda: load_failures(running, "triton1") >= seen + 2, "mismatch seen", RECOVERY_WAIT_S)
            mismatch = loader.status("triton1")
            assert device_info(client, "triton1").healthy is False

            write_cnn(repo, cnn_onnx)
            admin.load_model("cnn")  # reloads it from its changed config
            wait_until(lambda: device_info(client, "triton1").healthy, "triton1 healthy", RECOVERY_WAIT_S)
            after = client.infer("classify_t", {"image": image}, timeout_s=WAIT_S)
            assert load_state(running, "triton1") == "loaded"
            assert loader.status("triton1") == LoadStatus("loaded")
            assert recovery_tasks(running, "triton1") == 0

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    assert "cnn_t" in refused.value.details()
    assert "model cnn on Triton server" in missing and "(device triton1): not ready" in missing
    assert mismatch.state in ("failed", "loading") and mismatch.failures >= 4
    assert "output logits is declared FP32 [-1, 10]" in mismatch.error and "FP32 [-1, 11]" in mismatch.error
    assert_outputs(after, expected)
    assert stage_devices(after)["cnn"] == "triton1"
