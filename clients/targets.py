"""Where the CLIs (`heddle infer`, `list`, `bench`) connect: the gRPC port (heddle.v1, the default) or
the HTTP port (KServe v2 REST and the OpenAI API), chosen as Triton's and vLLM's tools choose it:
`--target http://HOST:PORT` (or https://) as a URL, or `-i/--protocol http` with HOST:PORT as
perf_analyzer takes it. The TLS options (`--ca`, `--cert`, `--key`) apply to either."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import DEFAULT_TARGET, HeddleClient
from heddle.clients.http_client import DEFAULT_HTTP_TARGET, AsyncHttpClient
from heddle.clients.tls_args import TlsArgsError, add_tls_args, ssl_context, tls_kwargs

__all__ = ["HttpClient", "Target", "add_target_args", "async_client", "resolve_target", "sync_client"]


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", "--url", default=None, metavar="HOST:PORT|URL",
                   help=f"HOST:PORT of the gRPC port (default {DEFAULT_TARGET}), or http(s)://HOST:PORT of "
                        f"the HTTP port (KServe v2 REST; LLM streams through the OpenAI API)")
    p.add_argument("-i", "--protocol", choices=("grpc", "http"), default=None,
                   help=f"as perf_analyzer's -i: http with a bare HOST:PORT (default {DEFAULT_HTTP_TARGET}); "
                        "default grpc, or http when --target is a URL")
    p.add_argument("--token", default=None, help="bearer token sent as authorization metadata / header")
    add_tls_args(p)


@dataclass(frozen=True, slots=True)
class Target:
    protocol: str  # "grpc" | "http"
    address: str  # HOST:PORT for gRPC, a URL for HTTP


def resolve_target(args: argparse.Namespace) -> Target:
    """The target the options name; TlsArgsError (a ValueError) for a contradiction."""
    target, protocol = getattr(args, "target", None), getattr(args, "protocol", None)
    tls = bool(getattr(args, "ca", None) or getattr(args, "cert", None))
    if target and "://" in target:
        scheme = target.split("://", 1)[0].lower()
        if scheme not in ("http", "https") or protocol == "grpc":
            raise TlsArgsError(f"--target {target}: a URL names the HTTP port (http:// or https://); for gRPC "
                               "give HOST:PORT")
        return Target("http", target)
    if protocol == "http":
        return Target("http", f"{'https' if tls else 'http'}://{target or DEFAULT_HTTP_TARGET}")
    return Target("grpc", target or DEFAULT_TARGET)


def async_client(args: argparse.Namespace) -> AsyncHeddleClient | AsyncHttpClient:
    """Create inside the loop that uses it."""
    target = resolve_target(args)
    if target.protocol == "http":
        return AsyncHttpClient(target.address, token=args.token, ssl_context=ssl_context(args))
    return AsyncHeddleClient(target.address, token=args.token, **tls_kwargs(args))


def sync_client(args: argparse.Namespace) -> HeddleClient | HttpClient:
    target = resolve_target(args)
    if target.protocol == "http":
        return HttpClient(target.address, token=args.token, ssl_context=ssl_context(args))
    return HeddleClient(target.address, token=args.token, **tls_kwargs(args))


class HttpClient:
    """AsyncHttpClient's blocking face for `heddle infer` and `list`: each call runs on a loop of its own."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def make() -> AsyncHttpClient:  # aiohttp's session belongs to the loop it is made in
            return AsyncHttpClient(url, **kwargs)

        self._client = self._loop.run_until_complete(make())

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run_until_complete(self._client.infer(*args, **kwargs))

    def infer_stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        events: AsyncIterator[Any] = self._client.infer_stream(*args, **kwargs)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(events.aclose())  # type: ignore[attr-defined]

    def list_pipelines(self) -> list[Any]:
        return self._loop.run_until_complete(self._client.list_pipelines())

    def list_models(self) -> list[Any]:
        return self._loop.run_until_complete(self._client.list_models())

    def list_devices(self) -> list[Any]:
        return self._loop.run_until_complete(self._client.list_devices())
