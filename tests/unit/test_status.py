"""The one map from the runtime's outcome and error kind to gRPC status, message and retry hint."""

from __future__ import annotations

import grpc
import pytest

from heddle.backends.base import BackendError, BackendTimeout, DeviceUnavailable, InputError
from heddle.scheduler import Outcome
from heddle.server.runtime.error_kind import DeviceLostMidStream, ErrorKind, classify
from heddle.server.runtime.jobs import JobResult
from heddle.server.runtime.status import RETRY_AFTER_KEY, request_error, retry_metadata, status_code

C = grpc.StatusCode


def _result(outcome: Outcome, kind: ErrorKind | None = None, retry_after_s: float | None = None) -> JobResult:
    return JobResult(request_id="r1", pipeline="p", outcome=outcome, error="why", error_kind=kind, outputs={},
                     stages=(), total_s=0.01, priority=1, deadline_missed=False, retry_after_s=retry_after_s)


@pytest.mark.parametrize(("outcome", "code"), [
    (Outcome.OK, C.OK), (Outcome.CANCELLED, C.CANCELLED), (Outcome.UNAVAILABLE, C.UNAVAILABLE),
    (Outcome.DEADLINE_EXCEEDED, C.DEADLINE_EXCEEDED), (Outcome.FAILED, C.INTERNAL),
    (Outcome.REJECTED, C.RESOURCE_EXHAUSTED),
])
def test_every_outcome_has_its_status(outcome: Outcome, code: grpc.StatusCode) -> None:
    """Each outcome answers with the status of DESIGN.md §5; FAILED with no kind is INTERNAL."""
    assert status_code(outcome) is code


@pytest.mark.parametrize(("kind", "code"), [
    (ErrorKind.INVALID_INPUT, C.INVALID_ARGUMENT), (ErrorKind.TIMEOUT, C.DEADLINE_EXCEEDED),
    (ErrorKind.DEVICE_LOST, C.UNAVAILABLE), (ErrorKind.INTERNAL, C.INTERNAL),
])
def test_a_failed_request_answers_with_its_kind(kind: ErrorKind, code: grpc.StatusCode) -> None:
    """A FAILED request's status comes from its error kind."""
    assert status_code(Outcome.FAILED, kind) is code


def test_the_kind_refines_only_failed() -> None:
    """An error kind left on a request that ended otherwise does not change its status."""
    assert status_code(Outcome.CANCELLED, ErrorKind.INTERNAL) is C.CANCELLED
    assert status_code(Outcome.OK, ErrorKind.TIMEOUT) is C.OK


def test_every_kind_and_outcome_is_mapped() -> None:
    """No outcome or kind falls through the table (a new one must be given a status)."""
    for outcome in Outcome:
        for kind in (None, *ErrorKind):
            assert isinstance(status_code(outcome, kind), grpc.StatusCode)


@pytest.mark.parametrize(("exc", "kind", "text"), [
    (InputError("bad shape"), ErrorKind.INVALID_INPUT, "bad shape"),
    (BackendTimeout("too slow"), ErrorKind.TIMEOUT, "too slow"),
    (DeviceUnavailable("gone"), ErrorKind.DEVICE_LOST, "gone"),
    (DeviceLostMidStream("gone after 3 tokens"), ErrorKind.DEVICE_LOST, "gone after 3 tokens"),
    (BackendError("broke"), ErrorKind.INTERNAL, "BackendError: broke"),
    (ZeroDivisionError("x"), ErrorKind.INTERNAL, "ZeroDivisionError: x"),
])
def test_stage_exceptions_are_classified(exc: BaseException, kind: ErrorKind, text: str) -> None:
    """A backend's exception becomes a kind and the text reported; an unknown one is INTERNAL with its type."""
    assert classify(exc) == (kind, text)


@pytest.mark.parametrize(("retry_after_s", "metadata"), [
    (None, ()), (0.25, ((RETRY_AFTER_KEY, "250"),)), (0.0001, ((RETRY_AFTER_KEY, "1"),)),
    (0.0, ((RETRY_AFTER_KEY, "1"),)), (2.0004, ((RETRY_AFTER_KEY, "2000"),)),
])
def test_retry_hint_in_whole_milliseconds(retry_after_s: float | None, metadata: tuple) -> None:
    """The hint is rounded to milliseconds and never 0 (0 would read as 'retry now' in a busy loop)."""
    assert retry_metadata(retry_after_s) == metadata


def test_an_ok_result_is_no_error() -> None:
    """A request that ended OK raises nothing."""
    assert request_error(_result(Outcome.OK)) is None


def test_a_refusal_carries_its_status_message_and_hint() -> None:
    """A refused request's error names the request and its reason and carries the retry trailer."""
    error = request_error(_result(Outcome.REJECTED, retry_after_s=0.3))
    assert (error.code, error.message, error.trailing_metadata) == (
        C.RESOURCE_EXHAUSTED, "request r1: why", ((RETRY_AFTER_KEY, "300"),))


def test_a_failure_has_no_trailer() -> None:
    """A failed request answers with its kind's status and no retry hint."""
    error = request_error(_result(Outcome.FAILED, ErrorKind.INVALID_INPUT))
    assert (error.code, error.trailing_metadata) == (C.INVALID_ARGUMENT, ())
