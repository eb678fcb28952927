"""End to end with real Triton servers as heddle devices: a pipeline through one, failover when one
dies under load, a server that comes up after heddle, priority and cancellation across the hop."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from server_fixtures import RunningServer, parse_test_document, running_server, scrape_metrics, wait_until
from triton_fixtures import (  # noqa: F401  (fixtures are found by name)
    Gate,
    pending_requests,
    require_triton,
    triton_server,
    triton_zoo_paths,
    write_gate_model,
    write_zoo_models,
)

from heddle.backends.triton.server import TritonServer, free_port
from heddle.backends.zoo import ops
from heddle.backends.zoo.build import build_model
from heddle.clients.client import HeddleClient, InferResult, build_request
from heddle.server.config.builder import (
    document,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    python_model,
    stage,
    tensor,
    triton_device,
    triton_model,
)
from heddle.server.config.default import FRAME_OPS
from heddle.server.config.load import ConfigError
from heddle.v1 import heddle_pb2_grpc

# Each test here starts or talks to a real tritonserver (`make test-fast` leaves them out).
pytestmark = pytest.mark.triton

LOW, HIGH = 1, 4  # heddle's priority levels at the default of 4; 4 is the most urgent
WAIT_S = 30.0  # bound on any one call or wait; reached only when something is broken
RTOL, ATOL = 1e-4, 1e-5
ALLOWED_FAILURES = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}

CNN_IO = ([tensor("image", "FP32", (-1, 3, 64, 64))], [tensor("logits", "FP32", (-1, 10))])
GATE_IO = ([tensor("tag", "INT32", (-1, 1))], [tensor("seq", "INT64", (-1, 1))])


# ---- config: parts ({"devices": [...], "models": [...], "pipelines": [...]}) joined by config() ----

def config(*parts: Mapping[str, list[Any]], server: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One document of the parts' devices, models and pipelines, in the order given."""
    return document(server=server, **{key: [t for part in parts for t in part.get(key, ())]
                                      for key in ("devices", "models", "pipelines")})


def local(cnn_onnx: Path) -> dict[str, list[Any]]:
    """cpu0 (ORT) and py0 (python), the python ops, and the CNN on cpu0 with its classify pipeline."""
    devices = [onnx_device("cpu0", kind="cpu", providers=["CPUExecutionProvider"], intra_op_threads=1),
               python_device("py0", kind="cpu", slots=2)]
    return {"devices": devices, "models": [onnx_model("cnn", str(cnn_onnx)), *FRAME_OPS],
            "pipelines": classify("classify", "cnn")["pipelines"]}


def remote(device_id: str, url: str, slots: int) -> dict[str, list[Any]]:
    """A device on a Triton server at url."""
    return {"devices": [triton_device(device_id, url, slots=slots, client_timeout_s=WAIT_S)]}


def hosted(name: str, on_triton: str, devices: list[str], io: tuple[list[Any], list[Any]]) -> dict[str, list[Any]]:
    """heddle's model `name`: Triton's model `on_triton` on these devices."""
    return {"models": [triton_model(name, triton_model=on_triton, devices=devices, inputs=io[0], outputs=io[1])]}


def classify(name: str, cnn_model: str) -> dict[str, list[Any]]:
    """image -> pre (python) -> cnn (cnn_model) -> post (python)."""
    return {"pipelines": [pipeline(name, [tensor("image", "UINT8", (-1, 64, 64, 3))],
                                   {"probs": "post.probs", "label": "post.label"}, [
        stage("pre", "preprocess", image="input:image"), stage("cnn", cnn_model, image="pre.image"),
        stage("post", "postprocess", logits="cnn.logits")])]}


def gate_pipeline(name: str, gate_model: str) -> dict[str, list[Any]]:
    """tag -> gate (gate_model) -> seq."""
    gate = stage("gate", gate_model, tag="input:tag")
    return {"pipelines": [pipeline(name, GATE_IO[0], {"seq": "gate.seq"}, [gate])]}


def gate_then_echo(name: str, gate_model: str) -> dict[str, list[Any]]:
    """tag -> gate (gate_model) -> echo (python, py0) -> seq: a stage still to come after the gate."""
    seq = tensor("seq", "INT64", (-1, 1))
    echo = python_model("echo_seq", "heddle.backends.zoo.ops:echo", [{**seq, "name": "x"}], [{**seq, "name": "y"}])
    return {"models": [echo], "pipelines": [pipeline(name, GATE_IO[0], {"seq": "echo.y"}, [
        stage("gate", gate_model, tag="input:tag"), stage("echo", "echo_seq", x="gate.seq")])]}


# ---- helpers -------------------------------------------------------------------------------

def image_batch(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def classify_direct(cnn_onnx: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """preprocess -> the CNN's ONNX file in a plain session -> postprocess, run in the test."""
    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": ops.preprocess(image)["image"]})
    return ops.postprocess(logits)


def assert_outputs(result: InferResult, expected: dict[str, np.ndarray]) -> None:
    assert sorted(result.outputs) == sorted(expected)
    for name, want in expected.items():
        assert result.outputs[name].dtype == want.dtype and result.outputs[name].shape == want.shape, name
        np.testing.assert_allclose(result.outputs[name], want, rtol=RTOL, atol=ATOL, err_msg=name)


def stage_devices(result: InferResult) -> dict[str, str]:
    return {s.stage: s.device for s in result.stages}


def run_gate(client: HeddleClient, pipeline: str, tag: int, priority: int = 0) -> int:
    """One request through a gate pipeline; the order in which Triton's gate model executed it."""
    result = client.infer(pipeline, {"tag": np.array([[tag]], np.int32)}, priority=priority, timeout_s=WAIT_S)
    return int(result.outputs["seq"].item())


def device_info(client: HeddleClient, device_id: str):
    (info,) = [d for d in client.list_devices(timeout_s=WAIT_S) if d.id == device_id]
    return info


def request_counts(running: RunningServer, pipeline: str) -> dict[str, float]:
    """Requests of the pipeline the server ended, by status, from its Prometheus counter."""
    counts = {}
    for (name, labels), value in scrape_metrics(running.metrics_url).items():
        label = dict(labels)
        if name == "heddle_requests_total" and label["pipeline"] == pipeline:
            counts[label["status"]] = value
    return counts


@pytest.fixture(scope="module")
def gateway(triton_server: TritonServer, triton_zoo_paths: dict[str, Path]) -> Iterator[RunningServer]:
    """heddle with cpu0, py0 and three devices on the session's Triton server: triton0 (2 slots)
    for the CNN, tq1 (1 slot: heddle queues) and tq8 (8 slots: Triton queues) for the gate."""
    url = triton_server.grpc_url
    doc = config(local(triton_zoo_paths["cnn"]), remote("triton0", url, 2),
                 remote("tq1", url, 1), remote("tq8", url, 8),
                 hosted("cnn_t", "cnn", ["triton0"], CNN_IO),
                 hosted("gate_q", "gate", ["tq1"], GATE_IO),
                 hosted("gate_p", "gate", ["tq8"], GATE_IO),
                 classify("classify_t", "cnn_t"),
                 gate_pipeline("hold_in_heddle", "gate_q"), gate_pipeline("hold_in_triton", "gate_p"))
    with running_server(parse_test_document(doc)) as running:
        yield running


# ---- a pipeline through a Triton server ------------------------------------------------------

def test_middle_stage_on_triton_equals_running_the_models_directly(gateway: RunningServer,
                                                                     triton_zoo_paths) -> None:
    """classify with its CNN on triton0 equals the ONNX file and ops run directly; stages say where they ran."""
    image = image_batch(0, n=3)
    expected = classify_direct(triton_zoo_paths["cnn"], image)
    with gateway.client() as client:
        remote = client.infer("classify_t", {"image": image}, timeout_s=WAIT_S)
        local = client.infer("classify", {"image": image}, timeout_s=WAIT_S)
    assert_outputs(remote, expected)
    assert_outputs(local, expected)
    assert stage_devices(remote) == {"pre": "py0", "cnn": "triton0", "post": "py0"}
    assert stage_devices(local) == {"pre": "py0", "cnn": "cpu0", "post": "py0"}
    assert all(s.status == "OK" for s in remote.stages)


# ---- priority and cancellation across the hop --------------------------------------------------

def test_priority_request_overtakes_low_priority_queued_in_heddle(gateway: RunningServer,
                                                                   triton_server: TritonServer) -> None:
    """With tq1's one slot held, a priority-4 request runs before priority-1 ones queued in heddle ahead of it."""
    with gateway.client() as client, ThreadPoolExecutor(5) as pool, Gate(triton_server) as gate:
        held = pool.submit(run_gate, client, "hold_in_heddle", 0)
        gate.wait_started()
        lows = [pool.submit(run_gate, client, "hold_in_heddle", 1, LOW) for _ in range(3)]
        wait_until(lambda: device_info(client, "tq1").queued == 3, "3 low-priority stages queued in heddle")
        high = pool.submit(run_gate, client, "hold_in_heddle", 2, HIGH)
        wait_until(lambda: device_info(client, "tq1").queued == 4, "the high-priority stage queued in heddle")
        assert pending_requests(triton_server, "gate") == 0  # the queue is heddle's, not Triton's
        gate.release()
        first = held.result(WAIT_S)
        order = {"high": high.result(WAIT_S), "lows": sorted(f.result(WAIT_S) for f in lows)}
    assert order == {"high": first + 1, "lows": [first + 2, first + 3, first + 4]}


def test_priority_reaches_tritons_own_queue(gateway: RunningServer, triton_server) -> None:
    """With tq8 passing all on, Triton's own queue runs the priority-4 request before earlier priority-1 ones."""
    with gateway.client() as client, ThreadPoolExecutor(5) as pool, Gate(triton_server) as gate:
        held = pool.submit(run_gate, client, "hold_in_triton", 0)
        gate.wait_started()
        lows = [pool.submit(run_gate, client, "hold_in_triton", 1, LOW) for _ in range(3)]
        wait_until(lambda: pending_requests(triton_server, "gate") == 3, "3 low-priority requests in Triton")
        high = pool.submit(run_gate, client, "hold_in_triton", 2, HIGH)
        wait_until(lambda: pending_requests(triton_server, "gate") == 4, "the high-priority request in Triton")
        assert device_info(client, "tq8").queued == 0  # heddle held nothing back: Triton ordered them
        gate.release()
        first = held.result(WAIT_S)
        order = {"high": high.result(WAIT_S), "lows": sorted(f.result(WAIT_S) for f in lows)}
    assert order == {"high": first + 1, "lows": [first + 2, first + 3, first + 4]}


def test_cancelled_request_queued_in_heddle_never_reaches_triton(gateway: RunningServer, triton_server) -> None:
    """A client cancelling a request whose Triton stage waits in heddle's queue drops it: Triton never sees it."""
    cancelled_before = request_counts(gateway, "hold_in_heddle").get("CANCELLED", 0)
    with (gateway.client() as client, grpc.insecure_channel(gateway.target) as channel,
          ThreadPoolExecutor(1) as pool, Gate(triton_server) as gate):
        held = pool.submit(run_gate, client, "hold_in_heddle", 0)
        gate.wait_started()
        request = build_request("hold_in_heddle", {"tag": np.array([[1]], np.int32)})
        call = heddle_pb2_grpc.GatewayStub(channel).Infer.future(request, timeout=WAIT_S)
        wait_until(lambda: device_info(client, "tq1").queued == 1, "the stage queued in heddle")
        call.cancel()
        wait_until(lambda: device_info(client, "tq1").queued == 0, "the cancelled stage dropped")
        assert pending_requests(triton_server, "gate") == 0
        gate.release()
        first = held.result(WAIT_S)
        after = run_gate(client, "hold_in_heddle", 1)
    assert call.cancelled()
    assert after == first + 1  # nothing ran on Triton between the held request and this one
    cancelled = lambda: request_counts(gateway, "hold_in_heddle").get("CANCELLED", 0)  # noqa: E731
    wait_until(lambda: cancelled() == cancelled_before + 1, "the cancelled request counted once as CANCELLED")


def test_every_configured_priority_level_passes_to_triton(triton_server: TritonServer,
                                                          triton_zoo_paths) -> None:
    """With 8 priority levels configured, requests at levels 8 and 1 run through a Triton stage (the top
    level maps onto Triton's scale rather than failing as out of range)."""
    doc = config(local(triton_zoo_paths["cnn"]), remote("triton0", triton_server.grpc_url, 1),
                 hosted("gate_t", "gate", ["triton0"], GATE_IO), gate_pipeline("hold", "gate_t"),
                 server={"priority_levels": 8, "default_priority": 4})
    with running_server(parse_test_document(doc)) as running, running.client() as client:
        first = run_gate(client, "hold", 1, priority=8)
        assert run_gate(client, "hold", 1, priority=1) == first + 1


# ---- servers that die and servers that come up --------------------------------------------------

@pytest.fixture
def doomed_server(tmp_path: Path) -> Iterator[TritonServer]:
    """A server of its own with the CNN and the gate, for a test to kill."""
    require_triton()
    write_zoo_models(tmp_path / "repo", tmp_path / "models", ("cnn",))
    write_gate_model(tmp_path / "repo")
    with TritonServer(tmp_path / "repo", work_dir=tmp_path / "work") as server:
        yield server


@dataclass(frozen=True, slots=True)
class Outcome:
    """One client call: sent after the kill or not, its status code name, where its CNN ran."""

    after_kill: bool
    status: str
    cnn_device: str


class Load:
    """Client threads sending classify_t requests, one call at a time each, until stopped or max_calls."""

    def __init__(self, target: str, num_threads: int = 8, max_calls: int = 100) -> None:
        self.killed = threading.Event()
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.cond = threading.Condition()
        self.image = image_batch(1)
        self.threads = [threading.Thread(target=self._run, args=(target, max_calls), daemon=True)
                        for _ in range(num_threads)]

    def _run(self, target: str, max_calls: int) -> None:
        with HeddleClient(target) as client:
            for _ in range(max_calls):
                if self.stop.is_set():
                    return
                after_kill = self.killed.is_set()
                try:
                    result = client.infer("classify_t", {"image": self.image}, timeout_s=WAIT_S)
                    outcome = Outcome(after_kill, "OK", stage_devices(result)["cnn"])
                except grpc.RpcError as e:
                    outcome = Outcome(after_kill, e.code().name, "")
                with self.cond:
                    self.outcomes.append(outcome)
                    self.cond.notify_all()

    def wait_for(self, n: int, after_kill: bool) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.count(after_kill) >= n, WAIT_S)
        assert ok, f"fewer than {n} calls ended (after_kill={after_kill}) within {WAIT_S} s"

    def count(self, after_kill: bool) -> int:
        return sum(o.after_kill == after_kill for o in self.outcomes)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT_S + 5)
        assert not any(t.is_alive() for t in self.threads), "a client call hung"


def test_killing_a_triton_server_under_load_moves_work_to_the_other(doomed_server: TritonServer,
                                                                     triton_server: TritonServer,
                                                                     triton_zoo_paths) -> None:
    """SIGKILL of triton0 under 8 clients: every call ends once, OK or a clear status; a stage in flight
    there is retried on triton1; calls after the kill run on triton1; triton0 is listed unhealthy."""
    doc = config(local(triton_zoo_paths["cnn"]),
                 remote("triton0", doomed_server.grpc_url, 2),
                 remote("triton1", triton_server.grpc_url, 2),
                 hosted("cnn_t", "cnn", ["triton0", "triton1"], CNN_IO),
                 hosted("gate_t", "gate", ["triton0", "triton1"], GATE_IO),
                 classify("classify_t", "cnn_t"), gate_then_echo("hold", "gate_t"))
    with (running_server(parse_test_document(doc)) as running, running.client() as client,
          ThreadPoolExecutor(1) as pool, Gate(doomed_server) as gate):
        # Only triton0's gate holds (the test listens to its FIFOs): this stage is surely in flight
        # there, with a deadline and a stage after it, when the server dies.
        held = pool.submit(client.infer, "hold", {"tag": np.array([[0]], np.int32)}, timeout_s=WAIT_S)
        gate.wait_started()
        with Load(running.target) as load:
            load.wait_for(24, after_kill=False)
            doomed_server.kill()
            load.killed.set()
            load.wait_for(24, after_kill=True)
        retried = held.result(WAIT_S)
        triton0 = device_info(client, "triton0")
        served = request_counts(running, "classify_t")
    outcomes = load.outcomes
    by_status = {s: float(sum(o.status == s for o in outcomes)) for s in {o.status for o in outcomes}}
    assert set(by_status) <= {"OK", *ALLOWED_FAILURES}, by_status
    assert served == by_status  # the server ended each call exactly once, with the status the client saw
    assert [o.cnn_device for o in outcomes if o.after_kill] == ["triton1"] * load.count(after_kill=True)
    assert stage_devices(retried) == {"gate": "triton1", "echo": "py0"}
    assert retried.outputs["seq"].dtype == np.int64
    assert (triton0.healthy, triton0.running, triton0.queued) == (False, 0, 0)


def test_server_down_at_start_joins_when_it_comes_up(triton_server: TritonServer, triton_zoo_paths,
                                                     tmp_path: Path) -> None:
    """heddle starts with triton1's server down (unhealthy, work goes to triton0); once a server
    comes up at that url, triton1 turns healthy and takes work while triton0 is busy."""
    require_triton()
    port = free_port()
    doc = config(local(triton_zoo_paths["cnn"]),
                 remote("triton0", triton_server.grpc_url, 1),
                 remote("triton1", f"127.0.0.1:{port}", 1),
                 hosted("cnn_t", "cnn", ["triton0", "triton1"], CNN_IO),
                 hosted("gate_t", "gate", ["triton0"], GATE_IO),
                 classify("classify_t", "cnn_t"), gate_pipeline("hold", "gate_t"))
    image = image_batch(2)
    expected = classify_direct(triton_zoo_paths["cnn"], image)
    write_zoo_models(tmp_path / "repo", tmp_path / "models", ("cnn",))
    with running_server(parse_test_document(doc)) as running, running.client() as client:
        assert device_info(client, "triton1").healthy is False
        before = client.infer("classify_t", {"image": image}, timeout_s=WAIT_S)
        assert stage_devices(before)["cnn"] == "triton0"
        with TritonServer(tmp_path / "repo", work_dir=tmp_path / "work", grpc_port=port):
            wait_until(lambda: device_info(client, "triton1").healthy, "triton1 healthy with its server up")
            with ThreadPoolExecutor(1) as pool, Gate(triton_server) as gate:
                held = pool.submit(run_gate, client, "hold", 0)
                gate.wait_started()  # triton0's one slot is busy: the CNN stage can only go to triton1
                after = client.infer("classify_t", {"image": image}, timeout_s=WAIT_S)
                gate.release()
                held.result(WAIT_S)
    assert_outputs(before, expected)
    assert_outputs(after, expected)
    assert stage_devices(after)["cnn"] == "triton1"


def test_a_model_spans_devices_of_its_own_backend_only(tmp_path: Path) -> None:
    """A Triton-hosted model that lists an ONNX Runtime device is refused when the config loads, naming both."""
    doc = config(local(build_model("cnn", tmp_path)), remote("triton0", "127.0.0.1:1", 1),
                 hosted("cnn_t", "cnn", ["triton0", "cpu0"], CNN_IO))
    with pytest.raises(ConfigError, match="device 'cpu0' has backend 'onnxruntime'.*'triton'"):
        parse_test_document(doc)
