"""[server] infer_token on the HTTP port: every route but the health checks needs
`Authorization: Bearer <token>` (401 without one, 403 with another), in each API's error shape."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from heddle.server.frontends.http_common import json_response
from heddle.server.frontends.security import bearer_token, token_ok

__all__ = ["InferTokens"]

OPEN_PREFIXES = ("/v2/health/",)  # liveness and readiness probes carry no secret


class InferTokens:
    """ASGI middleware: refuses a request without the inference token before any route sees it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.token or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = bearer_token(dict(scope["headers"]).get(b"authorization"))
        if given is not None and token_ok(given, self.token):
            await self.app(scope, receive, send)
            return
        status, message = ((401, "this server needs 'Authorization: Bearer <token>' (its infer_token)")
                           if given is None else (403, "the token in 'Authorization: Bearer <token>' is not "
                                                       "this server's infer_token"))
        body: Any = ({"error": {"message": message, "type": "authentication_error", "code": status}}
                     if path.startswith("/v1/") else {"error": message})  # OpenAI's error shape there
        response = json_response(body, status, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
