"""The one map from what the runtime reports (outcome, error kind, retry hint) to what a gRPC
client sees (status code, message, trailing metadata), shared by heddle.v1 and KServe."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from heddle.scheduler import Outcome
from heddle.server.runtime.error_kind import ErrorKind
from heddle.server.runtime.jobs import JobResult

__all__ = ["RETRY_AFTER_KEY", "RequestError", "request_error", "retry_metadata", "status_code"]

# The trailer a refusal carries: clients (HeddleError.retry_after_s, the load generator) read it.
RETRY_AFTER_KEY = "retry-after-ms"

class RequestError(Exception):
    """A request that cannot be served: the gRPC status code to answer with, its message, and
    trailing metadata (a refusal's retry hint under RETRY_AFTER_KEY) for the abort."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing_metadata = trailing_metadata


_Code = grpc.StatusCode
OUTCOME_CODES: Mapping[Outcome, grpc.StatusCode] = {
    Outcome.OK: _Code.OK, Outcome.CANCELLED: _Code.CANCELLED, Outcome.UNAVAILABLE: _Code.UNAVAILABLE,
    Outcome.DEADLINE_EXCEEDED: _Code.DEADLINE_EXCEEDED, Outcome.FAILED: _Code.INTERNAL,
    Outcome.REJECTED: _Code.RESOURCE_EXHAUSTED,
}
# A FAILED request answers with the status of its first failed stage's kind.
KIND_CODES: Mapping[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_INPUT: _Code.INVALID_ARGUMENT, ErrorKind.TIMEOUT: _Code.DEADLINE_EXCEEDED,
    ErrorKind.DEVICE_LOST: _Code.UNAVAILABLE, ErrorKind.INTERNAL: _Code.INTERNAL,
}


def status_code(outcome: Outcome, kind: ErrorKind | None = None) -> grpc.StatusCode:
    """The status a request that ended with this outcome (and, if FAILED, kind) answers with."""
    if outcome is Outcome.FAILED and kind is not None:
        return KIND_CODES[kind]
    return OUTCOME_CODES[outcome]


def retry_metadata(retry_after_s: float | None) -> tuple[tuple[str, str], ...]:
    """Trailing metadata with the retry hint in whole milliseconds (at least 1), or none."""
    if retry_after_s is None:
        return ()
    return ((RETRY_AFTER_KEY, str(max(1, round(retry_after_s * 1e3)))),)


def request_error(result: JobResult) -> RequestError | None:
    """The error a frontend raises for a request that did not end OK; None when it did."""
    code = status_code(result.outcome, result.error_kind)
    if code is _Code.OK:
        return None
    return RequestError(code, f"request {result.request_id}: {result.error}",
                        trailing_metadata=retry_metadata(result.retry_after_s))
