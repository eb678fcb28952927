"""Tests for the Triton backend (executor, errors, priority, timeouts, streams, health) on real Triton servers."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from triton_fixtures import (  # noqa: F401  (fixtures are found by name)
    ZOO_ON_TRITON,
    Gate,
    build_probe_repository,
    pending_requests,
    require_triton,
    triton_server,
    triton_zoo_paths,
    wait_until,
)
from tritonclient.utils import InferenceServerException

from heddle.backends.base import (
    BackendError,
    BackendTimeout,
    DeviceUnavailable,
    InputError,
)
from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.executor import TritonExecutor, map_error, read_triton_io_spec, triton_priority
from heddle.backends.triton.health import HealthTracker, TritonHealthWatcher
from heddle.backends.triton.server import TritonServer, free_port
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec
from heddle.server.runtime.executors import make_executor

# Each test here starts or talks to a real tritonserver (`make test-fast` leaves them out).
pytestmark = pytest.mark.triton

LOW, HIGH = 1, 4  # heddle priorities at the executor's default of 4 levels


def triton_model(name: str, **kw) -> ModelSpec:
    """A heddle model served by Triton under the same name; IO from the server unless given."""
    return ModelSpec(name, "triton", name, kw.pop("inputs", ()), kw.pop("outputs", ()), **kw)


def device(url: str, dev_id: str = "tr0") -> DeviceSpec:
    return DeviceSpec(dev_id, "remote", "triton", slots=8, options={"url": url, "client_timeout_s": 30})


@pytest.fixture(scope="module")
def executor(triton_server: TritonServer) -> Iterator[TritonExecutor]:
    ex = TritonExecutor(device(triton_server.grpc_url))
    for name in (*ZOO_ON_TRITON, "echo", "gate", "countdown"):
        ex.load(triton_model(name))
    yield ex
    ex.close()


def echo(ex: TritonExecutor, x: float = 1.0, **kw) -> dict:
    out = ex.run("echo", {"x": np.array([[x]], np.float32)}, **kw)
    return json.loads(out["info"][0, 0])


def tagged(tag: int) -> dict[str, np.ndarray]:
    return {"tag": np.array([[tag]], np.int32)}


def random_inputs(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs, _ = read_io_spec(path)
    return {t.name: rng.standard_normal([2 if d < 0 else d for d in t.shape]).astype(np.float32) for t in inputs}


# ---- running models ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_ON_TRITON)
def test_zoo_model_via_triton_equals_onnxruntime(executor: TritonExecutor, triton_zoo_paths, name: str) -> None:
    """Each zoo model run through Triton gives the outputs of running its ONNX file directly."""
    path = triton_zoo_paths[name]
    feed = random_inputs(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    got = executor.run(name, feed)
    assert sorted(got) == sorted(expected)
    for out_name, array in expected.items():
        assert got[out_name].dtype == array.dtype and got[out_name].shape == array.shape
        np.testing.assert_allclose(got[out_name], array, rtol=1e-5, atol=1e-6)


def test_io_spec_read_from_server_matches_onnx(triton_server: TritonServer, triton_zoo_paths) -> None:
    """read_triton_io_spec gives the ONNX graph's specs (batch dim -1) for every zoo model."""
    for name, path in triton_zoo_paths.items():
        assert read_triton_io_spec(triton_server.grpc_url, name) == read_io_spec(path)


def test_loaded_spec_takes_io_from_metadata(executor: TritonExecutor) -> None:
    """A model loaded without declared IO checks inputs against the server's metadata."""
    with pytest.raises(InputError, match="image"):
        executor.run("cnn", {"image": np.zeros((1, 3, 64, 64), np.float64)})


def test_declared_io_that_disagrees_with_server_is_refused(executor: TritonExecutor) -> None:
    """Declaring an input the server serves with another datatype fails at load, naming both."""
    wrong = triton_model("cnn", inputs=(TensorSpec("image", "FP16", (-1, 3, 64, 64)),))
    with pytest.raises(BackendError, match="FP16.*FP32"):
        executor.load(wrong)


def test_unknown_model_is_a_backend_error_naming_it(executor: TritonExecutor) -> None:
    """Loading a model the server does not have is a BackendError naming it, not DeviceUnavailable."""
    with pytest.raises(BackendError, match="no_such_model") as info:
        executor.load(triton_model("no_such_model"))
    assert not isinstance(info.value, DeviceUnavailable)


def test_model_error_carries_the_servers_message(executor: TritonExecutor) -> None:
    """A model that fails answers a BackendError with the model's own message."""
    with pytest.raises(BackendError, match="echo: x is negative") as info:
        echo(executor, -1.0)
    assert not isinstance(info.value, DeviceUnavailable)


def test_run_of_unloaded_model_is_refused(executor: TritonExecutor) -> None:
    """run() of a model never loaded on this device names it."""
    with pytest.raises(BackendError, match="not loaded"):
        executor.run("never_loaded", {})


def test_factory_builds_triton_executor_and_needs_url(triton_server: TritonServer) -> None:
    """make_executor builds a TritonExecutor for backend triton, which reports its URL; no url is an error."""
    ex = make_executor(device(triton_server.grpc_url))
    try:
        assert isinstance(ex, TritonExecutor)
        assert ex.providers() == [f"triton:{triton_server.grpc_url}"]
    finally:
        ex.close()
    with pytest.raises(BackendError, match="url"):
        make_executor(DeviceSpec("t", "remote", "triton"))


# ---- priority and timeout -------------------------------------------------------------------

def test_triton_priority_maps_heddle_levels() -> None:
    """heddle's most urgent level maps to Triton's 1, the least to its last, 0 stays the default."""
    assert [triton_priority(p, 4, 2) for p in (0, 1, 2, 3, 4)] == [0, 2, 2, 1, 1]
    assert [triton_priority(p, 4, 4) for p in (1, 2, 3, 4)] == [4, 3, 2, 1]
    assert triton_priority(3, 4, 0) == 0  # a model without priority levels
    with pytest.raises(ValueError, match="outside"):
        triton_priority(5, 4, 2)


def test_timeout_reaches_the_server_in_microseconds(executor: TritonExecutor) -> None:
    """timeout_s arrives at the model as the request's timeout in microseconds; none means 0."""
    # Generous: on a loaded 2-core box a short timeout could expire before the model runs.
    assert echo(executor, timeout_s=30.0)["timeout_us"] == 30_000_000
    assert echo(executor)["timeout_us"] == 0


def test_priority_request_overtakes_queued_low_priority(executor: TritonExecutor, triton_server) -> None:
    """With the model held busy, a high-priority request runs before low-priority ones queued ahead of it."""
    with Gate(triton_server) as gate:
        held = executor.pool.submit(executor.run, "gate", tagged(0))
        gate.wait_started()
        lows = [executor.pool.submit(executor.run, "gate", tagged(1), priority=LOW) for _ in range(3)]
        wait_until(lambda: pending_requests(triton_server, "gate") == 3, what="3 low requests queued")
        high = executor.pool.submit(executor.run, "gate", tagged(2), priority=HIGH)
        wait_until(lambda: pending_requests(triton_server, "gate") == 4, what="high request queued")
        gate.release()
        order = {"held": held.result(30)["seq"].item(), "high": high.result(30)["seq"].item()}
        low_seqs = [f.result(30)["seq"].item() for f in lows]
    assert order["held"] < order["high"] < min(low_seqs)


def test_request_whose_timeout_passes_in_queue_is_a_timeout(executor: TritonExecutor, triton_server) -> None:
    """A request still queued when its timeout passes ends with BackendTimeout, not DeviceUnavailable."""
    with Gate(triton_server) as gate:
        held = executor.pool.submit(executor.run, "gate", tagged(0))
        gate.wait_started()
        late = executor.pool.submit(executor.run, "gate", tagged(1), timeout_s=0.001)
        with pytest.raises(BackendTimeout, match="gate") as info:
            late.result(30)
        gate.release()
        held.result(30)
    assert not isinstance(info.value, DeviceUnavailable)


def test_server_queue_timeout_maps_to_timeout(triton_server: TritonServer) -> None:
    """Triton's own rejection of a request queued past its timeout (status UNAVAILABLE) maps to BackendTimeout."""
    with Gate(triton_server) as gate, tgrpc.InferenceServerClient(triton_server.grpc_url) as client:
        held = threading.Thread(target=client.infer, args=("gate", [_tag_input(0)]))
        held.start()
        gate.wait_started()
        errors: list[InferenceServerException] = []
        # No client deadline: only the server's queue timeout (1 ms) can end this request.
        client.async_infer("gate", [_tag_input(1)], lambda result, error: errors.append(error), timeout=1000)
        wait_until(lambda: pending_requests(triton_server, "gate") == 1, what="request queued")
        gate.release()
        held.join()
        wait_until(lambda: bool(errors), what="the queued request's answer")
    assert errors[0].status() == "StatusCode.UNAVAILABLE"
    mapped = map_error(errors[0], "model gate")
    assert isinstance(mapped, BackendTimeout) and "Request timeout expired" in str(mapped)


def _tag_input(tag: int) -> tgrpc.InferInput:
    item = tgrpc.InferInput("tag", [1, 1], "INT32")
    item.set_data_from_numpy(np.array([[tag]], np.int32))
    return item


def test_no_time_left_fails_without_sending(executor: TritonExecutor) -> None:
    """A timeout of zero or less is a BackendTimeout at once."""
    with pytest.raises(BackendTimeout, match="no time left"):
        echo(executor, timeout_s=0.0)


# ---- streams ------------------------------------------------------------------------------------

def test_decoupled_model_streams_every_response(executor: TritonExecutor) -> None:
    """A decoupled model's N responses come back in order through stream()."""
    got = [out["i"].item() for out in executor.stream("countdown", {"n": np.array([5], np.int32)})]
    assert got == [0, 1, 2, 3, 4]


def test_non_decoupled_model_streams_one_response(executor: TritonExecutor, triton_zoo_paths) -> None:
    """stream() of an ordinary model yields its single response, equal to run()."""
    feed = random_inputs(triton_zoo_paths["head_cls"])
    streamed = list(executor.stream("head_cls", feed))
    assert len(streamed) == 1
    np.testing.assert_array_equal(streamed[0]["logits"], executor.run("head_cls", feed)["logits"])


def test_closing_a_stream_early_cancels_it(executor: TritonExecutor) -> None:
    """Closing a stream after two of many responses cancels the request: the model stops sending."""
    total = 1_000_000
    stream = executor.stream("countdown", {"n": np.array([total], np.int32)})
    assert [out["i"].item() for out in itertools.islice(stream, 2)] == [0, 1]
    stream.close()
    (sent,) = [out["i"].item() for out in executor.stream("countdown", {"n": np.array([-1], np.int32)})]
    assert 2 <= sent < total


def test_stream_past_its_timeout_is_a_timeout(executor: TritonExecutor) -> None:
    """A stream still answering when its timeout passes ends with BackendTimeout."""
    with pytest.raises(BackendTimeout, match="countdown"):
        for _ in executor.stream("countdown", {"n": np.array([10**9], np.int32)}, timeout_s=0.2):
            pass


def test_run_of_decoupled_model_points_to_stream(executor: TritonExecutor) -> None:
    """run() refuses a decoupled model, saying to use stream()."""
    with pytest.raises(BackendError, match="stream"):
        executor.run("countdown", {"n": np.array([1], np.int32)})


# ---- dead servers and health ---------------------------------------------------------------

def test_unreachable_server_is_device_unavailable() -> None:
    """Loading from a port where no server listens is DeviceUnavailable."""
    ex = TritonExecutor(device(f"127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(DeviceUnavailable, match="echo"):
            ex.load(triton_model("echo"))
    finally:
        ex.close()


@pytest.fixture
def doomed_server(tmp_path: Path) -> Iterator[TritonServer]:
    """A short-lived server with the probe models only, for tests that kill it."""
    require_triton()
    build_probe_repository(tmp_path / "repo")
    with TritonServer(tmp_path / "repo", work_dir=tmp_path / "work") as server:
        yield server


def test_killed_server_fails_in_flight_and_new_requests_as_unavailable(doomed_server: TritonServer) -> None:
    """A request in flight when the server is killed, and every later one, end with DeviceUnavailable."""
    ex = TritonExecutor(device(doomed_server.grpc_url))
    try:
        ex.load(triton_model("gate"))
        ex.load(triton_model("echo"))
        with Gate(doomed_server) as gate:
            in_flight = ex.pool.submit(ex.run, "gate", tagged(0))
            gate.wait_started()
            doomed_server.kill()
            with pytest.raises(DeviceUnavailable, match="gate"):
                in_flight.result(30)
        with pytest.raises(DeviceUnavailable, match="echo"):
            echo(ex)
    finally:
        ex.close()


def test_health_watcher_reports_a_killed_server(doomed_server: TritonServer) -> None:
    """The polling watcher calls back (device, False) once the server dies, and nothing while it lives."""
    changes: list[tuple[str, bool]] = []
    unhealthy = threading.Event()

    def on_change(device_id: str, healthy: bool) -> None:
        changes.append((device_id, healthy))
        if not healthy:
            unhealthy.set()

    watcher = TritonHealthWatcher({"tr9": doomed_server.grpc_url}, on_change, period_s=0.05, timeout_s=1.0)
    assert watcher.poll_once() == []
    with watcher:
        doomed_server.kill()
        assert unhealthy.wait(30)
    assert changes == [("tr9", False)]
    assert watcher.tracker.snapshot() == {"tr9": False}


def test_health_tracker_counts_failures_and_recovers() -> None:
    """Two failures in a row are needed to mark unhealthy; one success marks healthy again."""
    tracker = HealthTracker(["a", "b"], failures_to_unhealthy=2)
    assert tracker.observe("a", False) is None
    assert tracker.observe("a", True) is None
    assert tracker.observe("a", False) is None
    assert tracker.observe("a", False) is False
    assert tracker.observe("a", False) is None
    assert tracker.observe("a", True) is True
    assert tracker.snapshot() == {"a": True, "b": True}
    with pytest.raises(KeyError):
        tracker.observe("c", True)
