"""Why a request's stage failed, in the runtime's own words (ErrorKind); frontends map it (status.py)."""

from __future__ import annotations

import enum

from heddle.backends.base import BackendTimeout, DeviceUnavailable, InputError

__all__ = ["DeviceLostMidStream", "ErrorKind", "classify"]


class ErrorKind(enum.Enum):
    """What went wrong in a request that ended FAILED. The runtime names the cause; which gRPC
    status a client sees for it is the frontends' business (server/runtime/status.py), so the runtime
    stays free of any wire protocol."""

    INVALID_INPUT = "invalid_input"  # the backend refused the inputs (dtype, shape, prompt)
    TIMEOUT = "timeout"  # a stage ran past its model's timeout_ms or its request's deadline
    DEVICE_LOST = "device_lost"  # the device went away mid-run and the stage was not retried
    INTERNAL = "internal"  # anything else: a bug, logged with the request id


class DeviceLostMidStream(Exception):
    """The device went away after tokens were already streamed to the client: they cannot be
    unsent, so the stage is not retried elsewhere (unlike DeviceUnavailable) and its request
    ends UNAVAILABLE."""


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """The kind of a failed stage's exception, and the error text to report."""
    if isinstance(exc, InputError):
        return ErrorKind.INVALID_INPUT, str(exc)
    if isinstance(exc, BackendTimeout):
        return ErrorKind.TIMEOUT, str(exc)
    if isinstance(exc, (DeviceUnavailable, DeviceLostMidStream)):
        return ErrorKind.DEVICE_LOST, str(exc)
    return ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}"
