"""OpenTelemetry tracing (server/observe/tracing.py) against a real gateway, spans caught with the
SDK's InMemorySpanExporter: a request's spans give its stage timeline exactly as its response
reports it; a client's traceparent is the parent; failures are error spans; KServe is traced too."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.clients.client import build_request
from heddle.server.config.builder import document, python_device, tensor
from heddle.v1 import heddle_pb2_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def _config(**tracing):
    return parse_test_document(document(
        devices=[python_device("py0", slots=2)],
        models=[py_model("a", "stage_fns:tail"), py_model("b", "stage_fns:tail"), py_model("bad", "stage_fns:boom")],
        pipelines=[chain("two", ["a", "b"]), chain("fails", ["a", "bad"])], tracing=tracing or None))


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    with running_server(_config(), span_exporter=exporter) as running:
        yield running, exporter


def _spans_of(exporter: InMemorySpanExporter, request_id: str):
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.attributes.get("heddle.request_id") == request_id)
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time)
    return root, children


def test_spans_reconstruct_the_stage_timeline_the_response_reports(traced) -> None:
    running, exporter = traced
    with running.client() as client:
        result = client.infer("two", {"x": np.ones(4, np.float32)}, request_id="r-timeline", deadline_ms=5000)
    root, children = _spans_of(exporter, "r-timeline")
    assert root.name == "heddle two" and root.status.status_code is StatusCode.UNSET
    assert root.attributes["heddle.deadline_ms"] == pytest.approx(5000, abs=1)  # the effective deadline
    assert (root.end_time - root.start_time) / 1e6 == pytest.approx(result.total_ms, abs=1e-3)
    assert [c.name for c in children] == ["stage s0", "stage s1"]
    for child, timing in zip(children, result.stages, strict=True):
        # The same numbers, placed on the wall clock: exact up to nanosecond rounding.
        assert (child.start_time - root.start_time) / 1e6 == pytest.approx(timing.start_offset_ms, abs=1e-3)
        assert (child.end_time - root.start_time) / 1e6 == pytest.approx(timing.end_offset_ms, abs=1e-3)
        assert child.attributes["heddle.device"] == timing.device == "py0"
        assert child.attributes["heddle.model"] == timing.model
        assert child.attributes["heddle.compute_ms"] == pytest.approx(timing.compute_ms, abs=1e-6)
        assert child.attributes["heddle.queue_ms"] == pytest.approx(timing.queue_ms, abs=1e-6)
        assert child.context.trace_id == root.context.trace_id


def test_a_callers_traceparent_is_the_request_spans_parent(traced) -> None:
    running, exporter = traced
    request = build_request("two", {"x": np.ones(4, np.float32)}, request_id="r-parent")
    with grpc.insecure_channel(running.target) as channel:
        heddle_pb2_grpc.GatewayStub(channel).Infer(
            request, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")], timeout=30)
    root, children = _spans_of(exporter, "r-parent")
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_SPAN_ID and root.parent.is_remote
    assert len(children) == 2


def test_a_failed_stage_is_an_error_span_and_the_request_span_says_why(traced) -> None:
    running, exporter = traced
    with running.client() as client, pytest.raises(Exception, match="boom"):
        client.infer("fails", {"x": np.ones(4, np.float32)}, request_id="r-fails")
    root, children = _spans_of(exporter, "r-fails")
    assert root.status.status_code is StatusCode.ERROR and root.attributes["heddle.outcome"] == "FAILED"
    assert root.attributes["rpc.grpc.status_code_name"] == "INTERNAL"
    assert [c.status.status_code for c in children] == [StatusCode.UNSET, StatusCode.ERROR]
    assert "boom" in children[1].attributes["heddle.error"]


def test_kserve_requests_are_traced(traced) -> None:
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    running, exporter = traced
    client = tritonclient_grpc.InferenceServerClient(running.target)
    x = tritonclient_grpc.InferInput("x", [4], "FP32")
    x.set_data_from_numpy(np.ones(4, np.float32))
    client.infer("two", [x], request_id="r-kserve", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    root, children = _spans_of(exporter, "r-kserve")
    assert format(root.context.trace_id, "032x") == TRACE_ID and len(children) == 2


def test_tracing_is_off_unless_configured() -> None:
    """No [tracing] table: no tracer, nothing recorded; [tracing] enabled builds one (console exporter)."""
    with running_server(_config()) as running:
        assert running.server.tracer is None
    config = _config(enabled=True, exporter="console", sampling_ratio=0.5)
    assert config.tracing.enabled and config.tracing.sampling_ratio == 0.5


def test_a_stage_retried_on_another_device_shows_as_a_retry_event() -> None:
    """The first run's device is lost (DeviceUnavailable): the stage runs again elsewhere, and the
    request span carries a `retry` event naming the lost device, at its time within the request."""
    import itertools

    from heddle.backends.base import DeviceUnavailable
    from heddle.server.testing import function_executors

    config = parse_test_document(document(
        devices=[python_device("py0"), python_device("py1")], models=[py_model("a", "stage_fns:tail")],
        pipelines=[chain("one", ["a"])]))
    calls = itertools.count()

    def first_call_loses_its_device(model, inputs):
        if next(calls) == 0:
            raise DeviceUnavailable("unplugged")
        return {"y": inputs["x"]}

    exporter = InMemorySpanExporter()
    executors = function_executors(config.devices, first_call_loses_its_device)
    with running_server(config, executors=executors, span_exporter=exporter) as running, running.client() as client:
        result = client.infer("one", {"x": np.ones(4, np.float32)}, request_id="r-retry")
    root, (child,) = _spans_of(exporter, "r-retry")
    (retry,) = [e for e in root.events if e.name == "retry"]
    lost = retry.attributes["heddle.device"]
    assert lost in ("py0", "py1") and child.attributes["heddle.device"] == result.stages[0].device != lost
    assert "unplugged" in retry.attributes["heddle.error"]
    assert root.start_time <= retry.timestamp <= child.start_time


@pytest.mark.slow
def test_a_callers_traceparent_is_passed_on_to_a_triton_device() -> None:
    """A gateway whose `triton` device is another heddle's KServe endpoint (the same
    GRPCInferenceService a Triton server speaks): the caller's traceparent reaches that server, so
    its span joins the caller's trace, as a Triton server's would."""
    from heddle.server.config.builder import triton_device, triton_model

    remote_spans = InMemorySpanExporter()
    remote = parse_test_document(document(devices=[python_device("py0")], models=[py_model("a", "stage_fns:tail")],
                                          pipelines=[chain("p", ["a"])]))
    with running_server(remote, span_exporter=remote_spans) as backend:
        front = parse_test_document(document(
            devices=[triton_device("tr0", backend.target)],
            models=[triton_model("a_remote", triton_model="a", inputs=[tensor("x")], outputs=[tensor("y")])],
            pipelines=[chain("via_triton", ["a_remote"])]))
        request = build_request("via_triton", {"x": np.ones(4, np.float32)}, request_id="r-forward")
        with running_server(front) as gateway, grpc.insecure_channel(gateway.target) as channel:
            response = heddle_pb2_grpc.GatewayStub(channel).Infer(
                request, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")], timeout=30)
    assert list(response.outputs[0].shape) == [4]
    (span,) = [s for s in remote_spans.get_finished_spans() if s.parent is None or s.parent.is_remote]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
