"""HeddleError: what both clients raise for a failed call, with the server's retry hint.

A refusal at admission (RESOURCE_EXHAUSTED) carries `retry-after-ms` trailing metadata, heddle.v1
and KServe alike; grpc's own errors leave it to every caller to dig out, so the clients turn
them into HeddleError, which reads it once into `retry_after_s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

__all__ = ["RETRY_AFTER_KEY", "HeddleError", "heddle_errors", "retry_after_s"]

RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata of an admission refusal: when to try again


class HeddleError(grpc.RpcError):
    """A failed call: the server's status code and message, and the retry hint of a refusal.

    The grpc error it replaces is its `__cause__`; code(), details() and trailing_metadata()
    answer as that error's did.
    """

    def __init__(self, cause: grpc.RpcError) -> None:
        self._code = _call(cause, "code") or grpc.StatusCode.UNKNOWN
        self._details = _call(cause, "details") or ""
        self._trailing = tuple((k, v) for k, v in (_call(cause, "trailing_metadata") or ()))
        self._debug = _call(cause, "debug_error_string") or ""
        # None when absent or unreadable: a hint the server did not give is not invented here.
        self.retry_after_s: float | None = retry_after_s(self._trailing)
        super().__init__(f"{self._code.name}: {self._details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def debug_error_string(self) -> str:
        return self._debug


def _call(err: grpc.RpcError, method: str) -> Any:
    fn = getattr(err, method, None)
    return fn() if callable(fn) else None


def retry_after_s(metadata: Iterable[tuple[str, Any]]) -> float | None:
    """Seconds from a `retry-after-ms` entry of gRPC metadata; None without a readable one."""
    for key, value in metadata:
        if key == RETRY_AFTER_KEY:
            try:
                ms = float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
            return ms / 1e3 if ms >= 0 else None
    return None


@contextmanager
def heddle_errors() -> Iterator[None]:
    """Inside it, a grpc.RpcError becomes a HeddleError (raised from it)."""
    try:
        yield
    except HeddleError:
        raise
    except grpc.RpcError as err:
        raise HeddleError(err) from err
