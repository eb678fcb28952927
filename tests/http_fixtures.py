"""Raw HTTP against a running gateway (what curl would send): the status, headers and body as they come."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server_fixtures import WAIT_S, RunningServer

__all__ = ["HttpReply", "http_call", "http_json"]


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(running: RunningServer, method: str, path: str, body: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> HttpReply:
    """One request on a fresh connection to the gateway's HTTP port."""
    conn = http.client.HTTPConnection("127.0.0.1", running.server.http_port, timeout=WAIT_S)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return HttpReply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def http_json(running: RunningServer, path: str, doc: Any, headers: Mapping[str, str] | None = None) -> HttpReply:
    """POST a JSON document."""
    return http_call(running, "POST", path, json.dumps(doc).encode(),
                     {"content-type": "application/json", **(headers or {})})
