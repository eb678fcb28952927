"""Answering fuzz cases (fuzz_requests.py) with a status code name: in-process through the real
servicers, or over gRPC against a real server. Anything but a status is a crash, named as such."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import grpc
from fuzz_requests import ALLOWED_CODES, Case
from structlog.testing import capture_logs
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from heddle.server.app import HeddleServer
from heddle.server.frontends.service import GatewayServicer
from heddle.v1 import heddle_pb2_grpc as pb_grpc

__all__ = ["ErrorLog", "InProcess", "OverGrpc", "Tally"]

HANG_S = 60.0  # no case takes this long unless something hangs, which is a defect too
_INFER = {"v1": "/heddle.v1.Gateway/Infer", "kserve": "/inference.GRPCInferenceService/ModelInfer"}


class ErrorLog(logging.Handler):
    """The server's log records at ERROR or above while in use: a bug a status code can hide (a
    stage completion the runtime could not place still lets its request end with a fine code).
    Heard both ways structlog may be set up: routed to stdlib logging (configure_logging, as
    `heddle serve` and the bench do), or left at its default (tests), captured then."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._stack = contextlib.ExitStack()
        self._captured: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(str(record.msg)[:400])

    def __enter__(self) -> ErrorLog:
        logging.getLogger("heddle").addHandler(self)
        self._captured = self._stack.enter_context(capture_logs())
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()
        logging.getLogger("heddle").removeHandler(self)
        self.messages += [str(e)[:400] for e in self._captured if e.get("log_level") in ("error", "critical")]


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


class _Context:
    """What the servicers read of grpc's ServicerContext on a unary call: the gRPC deadline, the
    call's metadata (none here; the trace context is read from it) and abort. The narrowest seam
    that lets the bulk of the fuzz skip the transport."""

    def __init__(self, remaining_s: float | None) -> None:
        self._remaining_s = remaining_s

    def time_remaining(self) -> float | None:
        return self._remaining_s

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise _Aborted(code)


class InProcess:
    """Cases through GatewayServicer.Infer and KServeServicer.ModelInfer of a running server, on its
    loop: validation, decoding, the scheduler and the stages are the real ones."""

    def __init__(self, server: HeddleServer, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway, self.kserve, self.loop = GatewayServicer(server.runtime), server.kserve, loop

    def answer(self, case: Case) -> str:
        return asyncio.run_coroutine_threadsafe(self._answer(case), self.loop).result(HANG_S + 5)

    async def _answer(self, case: Case) -> str:
        context = _Context(case.grpc_timeout_s)
        call = self.gateway.Infer if case.frontend == "v1" else self.kserve.ModelInfer
        try:
            await asyncio.wait_for(call(case.message, context), HANG_S)
        except _Aborted as exc:
            return exc.code.name
        except Exception as exc:  # grpc would answer UNKNOWN: a defect
            return f"crash {type(exc).__name__}: {str(exc)[:160]}"
        return "OK"


class OverGrpc:
    """Cases over a channel to a real server: messages unary or on a stream, raw bytes as they are."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.gateway = pb_grpc.GatewayStub(self.channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self.channel)
        self._raw = {k: self.channel.unary_unary(m, request_serializer=None, response_deserializer=None)
                     for k, m in _INFER.items()}

    def close(self) -> None:
        self.channel.close()

    def answer(self, case: Case, stream: bool = False) -> str:
        timeout = HANG_S if case.grpc_timeout_s is None else min(case.grpc_timeout_s, HANG_S)
        try:
            if case.raw is not None:
                self._raw[case.frontend](case.raw, timeout=timeout)
            elif case.frontend == "v1":
                if stream:
                    list(self.gateway.InferStream(case.message, timeout=timeout))
                else:
                    self.gateway.Infer(case.message, timeout=timeout)
            elif stream:  # errors come in a response's error_message; an LLM's tokens come first
                responses = list(self.kserve.ModelStreamInfer(iter([case.message]), timeout=timeout))
                errors = [r.error_message.split(":", 1)[0] for r in responses if r.error_message]
                return errors[0] if errors else "OK" if responses else "no response"
            else:
                self.kserve.ModelInfer(case.message, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"


@dataclass
class Tally:
    """Answers counted by code, overall and per kind of case (frontend, raw, stream); the cases
    whose answer was not allowed, kept (the first few) to show."""

    counts: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    unexpected: list[tuple[str, str]] = field(default_factory=list)

    def add(self, answer: str, case: Case, stream: bool = False) -> bool:
        self.counts[answer] += 1
        kind = case.frontend + ("-raw" if case.raw is not None else "") + ("-stream" if stream else "")
        self.by_kind.setdefault(kind, Counter())[answer] += 1
        ok = answer in ALLOWED_CODES
        if not ok and len(self.unexpected) < 20:
            self.unexpected.append((answer, repr(case.message if case.raw is None else case.raw)[:600]))
        return ok

    @property
    def num_unexpected(self) -> int:
        return sum(n for code, n in self.counts.items() if code not in ALLOWED_CODES)
