"""gRPC status codes (what server/runtime/status.py maps every outcome to) as HTTP statuses and headers,
so both HTTP frontends answer a refusal, a bad request or a failure exactly as gRPC would, in HTTP terms."""

from __future__ import annotations

import math
from collections.abc import Mapping

import grpc

from heddle.server.runtime.status import RETRY_AFTER_KEY, RequestError

__all__ = ["HTTP_STATUS", "error_headers", "http_status"]

_C = grpc.StatusCode
# 499 is nginx's "client closed request": the client went away, nobody reads the answer.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    _C.OK: 200, _C.INVALID_ARGUMENT: 400, _C.FAILED_PRECONDITION: 400, _C.OUT_OF_RANGE: 400,
    _C.UNAUTHENTICATED: 401, _C.PERMISSION_DENIED: 403, _C.NOT_FOUND: 404, _C.ALREADY_EXISTS: 409,
    _C.ABORTED: 409, _C.RESOURCE_EXHAUSTED: 429, _C.CANCELLED: 499, _C.UNKNOWN: 500, _C.INTERNAL: 500,
    _C.DATA_LOSS: 500, _C.UNIMPLEMENTED: 501, _C.UNAVAILABLE: 503, _C.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a request that would end with this gRPC status answers with."""
    return HTTP_STATUS.get(code, 500)


def error_headers(exc: RequestError) -> dict[str, str]:
    """A refusal's retry hint as HTTP's Retry-After (whole seconds, rounded up, at least 1) and, for
    clients that want the precision gRPC gives, heddle's retry-after-ms; no hint, no headers."""
    hint = dict(exc.trailing_metadata).get(RETRY_AFTER_KEY)
    if hint is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(int(hint) / 1000))), RETRY_AFTER_KEY: str(hint)}
