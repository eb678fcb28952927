"""The HTTP port: one Starlette app (KServe v2 REST, the OpenAI-compatible API) served by uvicorn on
the gateway's own event loop, beside grpc.aio, so both front doors share one runtime and scheduler.

uvicorn's own `serve()` installs SIGINT/SIGTERM handlers, which would take the signals from heddle's
loop; the server is driven through its public startup/main_loop/shutdown steps instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from heddle.server.config.load import ServerSettings
from heddle.server.frontends.http_auth import InferTokens
from heddle.server.frontends.http_common import RequestIds, json_response
from heddle.server.frontends.http_kserve import kserve_routes
from heddle.server.frontends.kserve import KServeServicer
from heddle.server.frontends.openai_api import openai_routes
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.runtime import Runtime

__all__ = ["HttpServer", "gateway_routes"]

# uvicorn logs each start and stop at info through the stdlib; heddle logs its own line for the port.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"no route for {request.method} {request.url.path}"}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"{request.url.path} does not take {request.method}"}, 405)


def gateway_routes(kserve: KServeServicer, runtime: Runtime, limits: RequestLimits) -> list[BaseRoute]:
    """Every HTTP route of the gateway: KServe v2 REST, then the OpenAI-compatible API."""
    return [*kserve_routes(kserve, runtime.config.server.max_message_bytes),
            *openai_routes(runtime, limits, kserve.catalog, kserve.tracer)]


def build_app(routes: list[BaseRoute], infer_token: str = "") -> Any:
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    return RequestIds(InferTokens(app, infer_token))


class HttpServer:
    """Serve routes on an already-bound socket; `await start()`, then `await stop()`."""

    def __init__(self, routes: list[BaseRoute], sock: socket.socket, settings: ServerSettings) -> None:
        self.sock = sock
        self.port = sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if settings.tls_cert:
            tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
            if settings.tls_client_ca:  # mutual TLS, as on the gRPC port
                tls |= {"ssl_ca_certs": settings.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        app = build_app(routes, settings.infer_token)
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                server_header=False, timeout_graceful_shutdown=1, **tls)
        self.server = uvicorn.Server(config)
        self._main: asyncio.Task | None = None

    async def start(self) -> None:
        config = self.server.config
        config.load()  # builds the TLS context: a bad file fails here, before anything serves
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self.sock])
        self._main = asyncio.ensure_future(self.server.main_loop())

    async def stop(self) -> None:
        """Stop accepting, close idle connections, wait (up to a second) for the answers under way."""
        if self._main is None:
            return
        self.server.should_exit = True
        # uvicorn's main loop only ticks (a 0.1 s sleep, then should_exit): cancelled, not waited
        # for, so a stop does not cost up to two ticks; shutdown() does the closing.
        self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._main
        await self.server.shutdown(sockets=[self.sock])
