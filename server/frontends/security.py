"""Transport security (TLS, mutual TLS) and bearer-token auth for the admin and inference RPCs."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = ["INFERENCE_PREFIXES", "OPEN_INFERENCE_METHODS", "AdminAuthInterceptor", "BearerAuthInterceptor",
           "InferAuthInterceptor", "admin_exposure", "bearer_token", "is_loopback", "server_credentials", "token_ok"]

# The inference services infer_token guards; KServe's liveness and readiness stay open, so a
# probe needs no secret (as grpc.health.v1 and reflection, which no prefix here covers).
INFERENCE_PREFIXES = ("/heddle.v1.Gateway/", "/inference.GRPCInferenceService/")
OPEN_INFERENCE_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                                    "/inference.GRPCInferenceService/ServerReady",
                                    "/inference.GRPCInferenceService/ModelReady"})


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface, so not loopback
        return False


def admin_exposure(grpc_host: str, admin_token: str, client_ca: str) -> str | None:
    """Why the Admin RPCs would be open to the network, or None when they are not.

    They are open when the gRPC port is bound beyond loopback and nothing authenticates a caller:
    no admin token and no mutual TLS (a client certificate signed by the operator's CA counts).
    """
    if admin_token or client_ca or is_loopback(grpc_host):
        return None
    return (f"grpc_host {grpc_host!r} is reachable beyond this machine and no admin token is set, so anyone "
            f"who reaches the gRPC port could call the Admin RPCs (SetPowerBudget, SetPolicy); set "
            f"HEDDLE_ADMIN_TOKEN (or [server] admin_token), bind to 127.0.0.1, or pass --insecure-admin "
            f"(insecure_admin = true) to accept that")


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS {what} file {str(path)!r}: {exc.strerror or exc}") from exc
    # grpc reports a bad PEM only when the first handshake fails; say which file now.
    if b"-----BEGIN " not in data:
        raise ValueError(f"TLS {what} file {str(path)!r} holds no PEM block")
    return data


def server_credentials(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None,
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca_file`, clients must present a cert it signed."""
    cert = _read_pem(cert_file, "certificate")
    key = _read_pem(key_file, "private key")
    client_ca = _read_pem(client_ca_file, "client CA") if client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None,
    )


def token_ok(given: str, expected: str) -> bool:
    """Constant-time, so response timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value, or None."""
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("utf-8", "replace")
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _aborting_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` whose every call ends with `code`."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # unreachable; makes this an async generator as a streaming handler must be

    ser, deser = handler.response_serializer, handler.request_deserializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, deser, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary, deser, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, deser, ser)
    return grpc.unary_unary_rpc_method_handler(abort_unary, deser, ser)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on methods under the protected prefixes (but the
    open ones). An empty token turns the check off."""

    def __init__(self, token: str, protected_prefixes: Sequence[str], what: str,
                 open_methods: frozenset[str] = frozenset()) -> None:
        self._token = token.encode("utf-8")
        self._prefixes = tuple(protected_prefixes)
        self._open = open_methods
        self._missing = f"{what} RPCs need 'authorization: Bearer <token>' metadata"
        self._wrong = f"the {what} token in 'authorization: Bearer <token>' is not the server's"

    def _verdict(self, details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
        if not self._token or not details.method.startswith(self._prefixes) or details.method in self._open:
            return None
        token = _bearer_token(details.invocation_metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, self._missing
        # Constant-time, so response timing does not leak how much of a guess was right.
        if not hmac.compare_digest(token.encode("utf-8"), self._token):
            return grpc.StatusCode.PERMISSION_DENIED, self._wrong
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        verdict = self._verdict(handler_call_details)
        if handler is None or verdict is None:
            return handler
        return _aborting_handler(handler, *verdict)


class AdminAuthInterceptor(BearerAuthInterceptor):
    """The admin token on heddle.v1 Admin: empty turns the check off, for loopback-only servers."""

    def __init__(self, token: str, protected_prefixes: Sequence[str] = ("/heddle.v1.Admin/",)) -> None:
        super().__init__(token, protected_prefixes, "admin")


class InferAuthInterceptor(BearerAuthInterceptor):
    """[server] infer_token on the inference RPCs of heddle.v1 and KServe (health stays open)."""

    def __init__(self, token: str) -> None:
        super().__init__(token, INFERENCE_PREFIXES, "inference", OPEN_INFERENCE_METHODS)
