"""The Prometheus /metrics endpoint: only /metrics (any other path is 404, not the same page again),
and without the `*_created` samples prometheus_client adds to every counter and histogram, which the
text format exposes as a second gauge series per series (`heddle_requests_created` beside
`heddle_requests_total`): a duplicate of each, with a start time no heddle dashboard reads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:  # typeshed's WSGI types (wsgiref.types is Python 3.11+)
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["METRICS_PATH", "MetricsHTTPServer", "WithoutCreated"]

METRICS_PATH = "/metrics"


class WithoutCreated:
    """A registry's families as it collects them, less each family's `<name>_created` samples."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = f"{family.name}_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family

    def restricted_registry(self, names: Iterable[str]) -> WithoutCreated:
        """What `?name[]=...` scrapes ask for, still without `_created`."""
        return WithoutCreated(self._registry.restricted_registry(names))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        """Scrapes are not logged: one line per scrape every few seconds says nothing."""


def _only_metrics(app: WSGIApplication) -> WSGIApplication:
    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: heddle serves its metrics at {METRICS_PATH} only\n".encode()]
        return app(environ, start_response)
    return serve


class MetricsHTTPServer:
    """A running /metrics endpoint on its own thread; call it (or `close()`) to stop it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._httpd = make_server(host, port, _only_metrics(make_wsgi_app(WithoutCreated(registry))), Server,
                                  handler_class=_Quiet)
        # A short poll: shutdown() waits for the loop to notice, and the default half second made
        # every in-process server's stop (tests, `heddle profile --under-load`) that much longer.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="heddle-metrics", daemon=True)
        self._thread.start()
        # The address the socket is bound to, read back from it rather than echoed from the argument.
        self.host: str = str(self._httpd.server_address[0])  # AF_INET(6): a str already
        self.port: int = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    __call__ = close
