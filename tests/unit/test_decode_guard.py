"""DecodeGuard: an undecodable request is INVALID_ARGUMENT, logged one line at most every period."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from structlog.testing import capture_logs

from heddle.server.frontends.decode_guard import DecodeGuard, Undecodable


class _Refused(Exception):
    pass


class _Context:
    """abort() as grpc's raises: the handler goes no further."""

    def __init__(self) -> None:
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborts.append((code, details))
        raise _Refused


def test_refusals_are_logged_once_a_period_with_a_count():
    """Five junk requests in one period give one warning; the next period's names the four left out."""
    now = [0.0]
    guard = DecodeGuard(log_every_s=10.0, clock=lambda: now[0])
    context = _Context()

    async def refuse_at(t: float) -> None:
        now[0] = t
        with pytest.raises(_Refused):
            await guard.refuse("/m", Undecodable("DecodeError: junk"), context)

    with capture_logs() as logs:
        for t in (0.0, 1.0, 2.0, 3.0, 9.9, 10.0):
            asyncio.run(refuse_at(t))
    warnings = [e for e in logs if e["event"] == "undecodable request"]
    assert [(w["left_out"], w["method"]) for w in warnings] == [(0, "/m"), (4, "/m")]
    assert {code for code, _ in context.aborts} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("not a valid message for /m: DecodeError: junk" in d for _, d in context.aborts)
