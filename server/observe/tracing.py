"""OpenTelemetry traces of requests: a span per request and a child per stage run, built when the
request ends from the same timings its response reports, so the two always agree.

Built after the fact, not as the request runs: the hot path gains nothing but one call per ended
request when tracing is on (none when off), and a span's times are the runtime's own measurements
(offsets from arrival) placed on the wall clock at the moment the request ends. A W3C `traceparent`
sent by the client (gRPC metadata) makes the request span a child of the caller's span.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from heddle.scheduler import Outcome

__all__ = ["TRACE_CONTEXT_KEYS", "RequestTracer", "TracingSettings", "make_tracer", "trace_headers_of",
           "trace_request"]

# Stage statuses whose span is an error (an OK or SKIPPED stage is not).
_ERROR_STATUSES = {"FAILED", "CANCELLED"}


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """The [tracing] table as the process runs with it (docs/CONFIG.md)."""

    enabled: bool = False
    exporter: str = "otlp"  # otlp (gRPC, to `endpoint`) | console
    endpoint: str = "http://127.0.0.1:4317"
    sampling_ratio: float = 1.0  # of requests with no sampled parent; a caller's decision is kept
    service_name: str = "heddle"


class RequestTracer:
    """Turns ended requests into spans on an OpenTelemetry tracer provider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("heddle")
        self._propagator = TraceContextTextMapPropagator()

    def record(self, result: Any, *, deadline_ms: float | None = None,
               metadata: Iterable[tuple[str, Any]] = (), status: str = "", end_ns: int | None = None) -> None:
        """Spans for one ended request (a JobResult): `metadata` is the call's invocation metadata,
        read for `traceparent`/`tracestate`; `status` the gRPC code name the client got."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end_ns = time.time_ns() if end_ns is None else end_ns
        arrival_ns = end_ns - int(result.total_s * 1e9)
        carrier = {k.lower(): v for k, v in metadata if isinstance(v, str)}
        parent = self._propagator.extract(carrier) if "traceparent" in carrier else None
        span = self._tracer.start_span(f"heddle {result.pipeline}", context=parent, kind=SpanKind.SERVER,
                                       start_time=arrival_ns, attributes=_request_attributes(result, deadline_ms,
                                                                                             status))
        from opentelemetry.trace import set_span_in_context

        context = set_span_in_context(span)
        for stage in result.stages:
            if stage.status == "SKIPPED":
                continue
            child = self._tracer.start_span(f"stage {stage.stage}", context=context,
                                            start_time=arrival_ns + int(stage.start_offset_s * 1e9),
                                            attributes=_stage_attributes(stage))
            if stage.status in _ERROR_STATUSES:
                child.set_status(Status(StatusCode.ERROR, stage.error or stage.status))
            child.end(end_time=arrival_ns + int(stage.end_offset_s * 1e9))
        for offset_s, name, attributes in getattr(result, "events", ()):  # freeze, migrate, retry, ...
            span.add_event(name, dict(attributes), timestamp=arrival_ns + int(offset_s * 1e9))
        for name, attributes in _events(result):
            span.add_event(name, attributes, timestamp=end_ns)
        if result.outcome is not Outcome.OK:
            span.set_status(Status(StatusCode.ERROR, result.error or result.outcome.name))
        span.end(end_time=end_ns)

    def shutdown(self, timeout_s: float = 0.5) -> None:
        """Export what is buffered, for at most timeout_s, then stop the exporter without waiting:
        an unreachable collector (OTLP retries with backoff for seconds) must not stretch the
        server's shutdown past its grace period."""
        self.provider.force_flush(timeout_millis=int(timeout_s * 1000))
        threading.Thread(target=self.provider.shutdown, name="heddle-otel-shutdown", daemon=True).start()


def _request_attributes(result: Any, deadline_ms: float | None, status: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "heddle.request_id": result.request_id, "heddle.pipeline": result.pipeline,
        "heddle.priority": result.priority, "heddle.outcome": result.outcome.name,
        "heddle.deadline_missed": result.deadline_missed, "heddle.total_ms": result.total_s * 1e3,
    }
    if status:
        attributes["rpc.grpc.status_code_name"] = status
    if deadline_ms is not None:
        attributes["heddle.deadline_ms"] = deadline_ms
        attributes["heddle.slack_ms"] = deadline_ms - result.total_s * 1e3
    if result.energy_source:  # "estimated" wherever it is: power cannot be read on every box
        attributes["heddle.energy_j"] = result.energy_j
        attributes["heddle.energy_source"] = result.energy_source
    return attributes


def _stage_attributes(stage: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "heddle.stage": stage.stage, "heddle.model": stage.model, "heddle.device": stage.device,
        "heddle.status": stage.status, "heddle.queue_ms": stage.queue_s * 1e3,
        "heddle.compute_ms": stage.compute_s * 1e3,
    }
    if stage.tokens:
        attributes.update({"heddle.tokens": stage.tokens, "heddle.ttft_ms": stage.ttft_s * 1e3,
                           "heddle.tpot_ms": stage.tpot_s * 1e3})
    if stage.energy_source:
        attributes.update({"heddle.energy_j": stage.energy_j, "heddle.energy_source": stage.energy_source})
    if stage.error:
        attributes["heddle.error"] = stage.error
    return attributes


def _events(result: Any) -> Sequence[tuple[str, dict[str, Any]]]:
    """What happened to the request as a whole: refused at admission, or shed before it ran."""
    if result.outcome is Outcome.REJECTED:
        hint = {} if result.retry_after_s is None else {"heddle.retry_after_ms": result.retry_after_s * 1e3}
        return [("admission_refused", {"heddle.reason": result.error, **hint})]
    if result.outcome is Outcome.DEADLINE_EXCEEDED and all(s.status == "SKIPPED" for s in result.stages):
        return [("shed", {"heddle.reason": result.error})]
    return []


TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")


def trace_headers_of(context: Any) -> dict[str, str] | None:
    """The W3C trace context a client sent in its call's metadata, to pass on to Triton devices
    (whether or not this server traces: propagating it is what lets the caller's trace continue)."""
    # getattr: a call context without metadata (an in-process caller's stand-in) has none to pass on
    read = getattr(context, "invocation_metadata", None)
    metadata = read() if read is not None else None
    found = {k.lower(): v for k, v in metadata or () if k.lower() in TRACE_CONTEXT_KEYS and isinstance(v, str)}
    return found if "traceparent" in found else None


def trace_request(tracer: RequestTracer | None, result: Any, error: Any, deadline_s: float | None,
                  context: Any) -> None:
    """The frontends' one call per ended request: nothing when tracing is off; `error` is the
    RequestError the client gets (None: OK), `context` the gRPC call's (its metadata)."""
    if tracer is None:
        return
    metadata = context.invocation_metadata() if context is not None else ()
    tracer.record(result, deadline_ms=None if deadline_s is None else deadline_s * 1e3,
                  metadata=metadata or (), status="OK" if error is None else error.code.name)


def make_tracer(settings: TracingSettings, exporter: Any = None) -> RequestTracer | None:
    """The process's tracer, or None when tracing is off. `exporter` replaces the configured one
    (tests pass the SDK's InMemorySpanExporter)."""
    if not settings.enabled and exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    return RequestTracer(provider)
