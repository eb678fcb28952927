"""Binding the listening ports: each way a start can fail here becomes one StartError line, not a traceback."""

from __future__ import annotations

import errno
import socket

import grpc

from heddle.server.config.load import ServerSettings
from heddle.server.frontends.security import admin_exposure, server_credentials
from heddle.server.observe.logs import get_logger

__all__ = ["StartError", "bind_grpc", "bind_tcp", "check_before_start", "start_metrics_http"]

log = get_logger("heddle.server")


class StartError(RuntimeError):
    """The server cannot start as configured; the message says why in one line."""


def check_before_start(s: ServerSettings, *, with_metrics_http: bool = True) -> None:
    """Refuse an exposed admin surface and taken ports before the slow part of a start (model loading)."""
    exposure = admin_exposure(s.grpc_host, s.admin_token, s.tls_client_ca)
    if exposure is not None and not s.insecure_admin:
        raise StartError(f"refusing to serve: {exposure}")
    if exposure is not None:
        log.warning("admin RPCs are open to the network (insecure_admin): anyone who reaches the gRPC port "
                    "can change the power budget and the policy", grpc_host=s.grpc_host, grpc_port=s.grpc_port)
    _probe(s.grpc_host, s.grpc_port, "grpc_port")
    _probe(s.http_host, s.http_port, "http_port")
    if with_metrics_http:
        _probe(s.metrics_host, s.metrics_port, "metrics_port")


def _probe(host: str, port: int, what: str) -> None:
    """StartError if no address of host:port can be bound now.

    grpc's C core prints its own error line for a taken port before Python sees the failure,
    so a taken port is found here first; a race after this is still caught at the real bind.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    first_error = None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc and http.server do
            try:
                sock.bind(address)
                return  # grpc, like this, is content with one of the resolved addresses
            except OSError as exc:
                first_error = first_error or exc
    raise StartError(_bind_message(host, port, what, first_error))


def _bind_message(host: str, port: int, what: str, exc: OSError | None) -> str:
    if exc is not None and exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {host}:{port} ({what}): the port is already in use "
                f"(another heddle? choose another with --{what.replace('_', '-')})")
    reason = (exc.strerror or str(exc)) if exc is not None else "no address to bind"
    return f"cannot listen on {host}:{port} ({what}): {reason}"


def bind_tcp(host: str, port: int, what: str) -> socket.socket:
    """A socket bound to host:port (the first resolved address that binds), for a server that
    listens on it; StartError naming `what` (the config key) when none binds."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    first_error = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            first_error = first_error or exc
    raise StartError(_bind_message(host, port, what, first_error))


def bind_grpc(server: grpc.aio.Server, s: ServerSettings) -> int:
    """Add the gRPC listening port (TLS when configured) and return the port number bound."""
    address = f"{s.grpc_host}:{s.grpc_port}"
    try:
        if s.tls_cert:
            creds = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca or None)
            return server.add_secure_port(address, creds)
        return server.add_insecure_port(address)
    except ValueError as exc:  # a TLS file unreadable or not PEM (server_credentials says which)
        raise StartError(str(exc)) from None
    except RuntimeError:  # grpc's "Failed to bind": taken since check_before_start, or not an address here
        raise StartError(f"cannot listen on {address} (grpc_port): grpc could not bind it "
                         f"(in use, or not an address of this machine)") from None


def start_metrics_http(metrics, host: str, port: int):
    """The /metrics HTTP server on host:port; StartError if it cannot listen."""
    try:
        return metrics.start_http(host, port)
    except OSError as exc:
        raise StartError(_bind_message(host, port, "metrics_port", exc)) from None
