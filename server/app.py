"""The gateway process: builds executors, runtime and the grpc.aio server; starts and stops them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from heddle.backends.base import Executor
from heddle.server.binding import bind_grpc, bind_tcp, check_before_start, start_metrics_http
from heddle.server.config.load import Config, load_config
from heddle.server.frontends.decode_guard import DecodeGuard
from heddle.server.frontends.http_server import HttpServer, gateway_routes
from heddle.server.frontends.kserve import SERVICE_NAME as KSERVE_SERVICE
from heddle.server.frontends.kserve import KServeServicer
from heddle.server.frontends.security import AdminAuthInterceptor, InferAuthInterceptor
from heddle.server.frontends.service import AdminServicer, GatewayServicer
from heddle.server.observe.logs import get_logger
from heddle.server.observe.tracing import make_tracer
from heddle.server.power.loop import PowerLoop
from heddle.server.runtime.executors import make_executor
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.metrics import Metrics
from heddle.server.runtime.reload import PINNED_SERVER_KEYS, Reloader, ReloadError
from heddle.server.runtime.runtime import Runtime
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

__all__ = ["FLUSH_S", "HeddleServer", "exit_now", "serve"]

log = get_logger("heddle.server")
# After the drain, how long the responses of the requests it ended get to leave: they are
# encoded and handed to gRPC within a few loop turns; this bounds the wait, not the common case.
FLUSH_S = 0.25
# How often Triton devices' readiness is polled: a lost server is rerouted around within this.
TRITON_HEALTH_PERIOD_S = 0.5
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Gateway"].full_name,
    pb.DESCRIPTOR.services_by_name["Admin"].full_name,
    KSERVE_SERVICE,
)


class HeddleServer:
    """One gateway: `await start()`, then `await stop()`; ports 0 pick free ones."""

    def __init__(self, config: Config, *, executors: Mapping[str, Executor] | None = None,
                 clock: Callable[[], float] = time.monotonic, with_metrics_http: bool = True,
                 span_exporter: Any = None) -> None:
        """executors: one per configured device, in place of the backends' own (a test's
        heddle.server.testing.function_executors); clock: the runtime's, in seconds (a FakeClock);
        span_exporter: an OpenTelemetry exporter that gets every request's spans, [tracing] or not
        (a test's InMemorySpanExporter)."""
        self.config = config
        self.metrics = Metrics()
        self.executors = _executors(config, executors)
        for ex in self.executors.values():
            if ex.device.backend == "triton":  # it maps heddle's scale onto Triton's, so needs its top
                ex.priority_levels = config.server.priority_levels
        self.tracer = make_tracer(config.tracing, span_exporter)  # None when tracing is off
        self.runtime = Runtime(config, self.executors, self.metrics, clock=clock,
                               record_events=self.tracer is not None)
        self.power = PowerLoop(self.runtime, self.metrics)  # sensors, DVFS, budget controller
        self.limits = RequestLimits(config, self.metrics)  # one memory budget for both front doors
        self.kserve = KServeServicer(self.runtime, self.limits, self.tracer)
        self.reloader = Reloader(self.runtime, config_loader(config),
                                 on_swap=(self.kserve.set_config, self.limits.update_models))
        self.kserve.attach_reloader(self.reloader)
        self.health = health.aio.HealthServicer()
        self._with_metrics_http = with_metrics_http
        self._metrics_http = None
        self._watcher = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.http_port = 0
        self.http: HttpServer | None = None  # KServe v2 REST and the OpenAI API (docs/HTTP.md)
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        s = self.config.server
        check_before_start(s, with_metrics_http=self._with_metrics_http)  # before the slow model loading
        await self.runtime.load_models()
        self.power.start()
        self._watch_remote_devices()
        interceptors: list[grpc.aio.ServerInterceptor] = [AdminAuthInterceptor(s.admin_token)] if s.admin_token else []
        if s.infer_token:
            interceptors.append(InferAuthInterceptor(s.infer_token))
        self.server = grpc.aio.server(interceptors=interceptors or None, options=[
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ])
        # Junk bytes: INVALID_ARGUMENT, not UNKNOWN and a traceback; every handler is guarded as it
        # is registered (not by an interceptor, which grpc.aio runs on every call).
        registry = DecodeGuard().registry(self.server)
        gateway = GatewayServicer(self.runtime, self.limits, self.tracer, self.kserve.shm)  # one set of regions
        pb_grpc.add_GatewayServicer_to_server(gateway, registry)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(self.runtime, self.power, self.reloader), registry)
        self.kserve.add_to_server(registry)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        # The asyncio servicer named: enable_server_reflection picks it only for a grpc.aio.Server itself.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)), registry)
        self.grpc_port = bind_grpc(self.server, s)
        self.http = HttpServer(gateway_routes(self.kserve, self.runtime, self.limits),
                               bind_tcp(s.http_host, s.http_port, "http_port"), s)
        self.http_port = self.http.port
        if self._with_metrics_http:  # bound before the gRPC server starts, so a taken port starts nothing
            self._metrics_http = start_metrics_http(self.metrics, s.metrics_host, s.metrics_port)
            self.metrics_port = self._metrics_http.port
        await self.server.start()
        await self.http.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("heddle serving", grpc=f"{s.grpc_host}:{self.grpc_port}", http=f"{s.http_host}:{self.http_port}",
                 metrics=f"{s.metrics_host}:{self.metrics_port}", policy=s.policy,
                 devices=[d.id for d in self.config.devices], pipelines=sorted(self.config.pipelines),
                 tls=bool(s.tls_cert), mutual_tls=bool(s.tls_client_ca), config=self.config.source)

    def _watch_remote_devices(self) -> None:
        """Poll Triton devices' readiness; changes hop onto the loop to reroute queued work."""
        urls = {d.id: d.options["url"] for d in self.config.devices if d.backend == "triton"}
        if not urls:
            return
        from heddle.backends.triton.health import TritonHealthWatcher

        loop = asyncio.get_running_loop()
        self._watcher = TritonHealthWatcher(
            urls, lambda dev, ok: loop.call_soon_threadsafe(self.runtime.set_device_health, dev, ok),
            period_s=TRITON_HEALTH_PERIOD_S,
        ).start()

    async def stop(self, grace_s: float | None = None, *, exiting: bool = False) -> None:
        """Stop accepting, let in-flight requests finish up to the grace period, then release all.

        Takes at most about grace_s + FLUSH_S whatever stages do: a stage thread still running is
        not waited for (Python cannot kill a thread; `serve` ends the process without it).
        exiting: the process ends right after (`heddle serve`), so gRPC's own stop is skipped."""
        grace_s = self.config.server.grace_period_s if grace_s is None else grace_s
        self.kserve.set_serving(False)
        await self.health.enter_graceful_shutdown()
        log.info("shutting down", in_flight=self.runtime.in_flight, grace_s=grace_s)
        # Drain before server.stop: gRPC core holds calls that arrive during stop(grace) until the
        # grace ends and then CANCELs them (grpc/grpc#41785); the runtime answers them UNAVAILABLE now.
        await self.runtime.drain(grace_s)
        if self.http is not None:
            await self.http.stop()
        await self._stop_grpc(exiting)
        if self._watcher is not None:
            self._watcher.stop()
        await self.power.stop()  # after the drain: frozen requests need it until they end
        self.reloader.close()
        if self.tracer is not None:  # the spans of the drained requests go out before the exit
            self.tracer.shutdown()
        for ex in self.executors.values():
            ex.close()
        if self._metrics_http is not None and not exiting:  # its close waits out one 50 ms poll
            self._metrics_http.close()
        log.info("heddle stopped")

    async def _stop_grpc(self, exiting: bool) -> None:
        """Let the responses of the drained requests leave; then stop gRPC, unless the process exits.

        gRPC's stop CANCELs the calls its core has accepted but not yet handed to heddle (calls
        that crossed the stop on the wire; under load every busy client has one), although heddle
        documents UNAVAILABLE. An exiting process keeps answering UNAVAILABLE for FLUSH_S and then
        lets the exit close the connections, which clients see as UNAVAILABLE."""
        if self.server is None:
            return
        if exiting:
            await asyncio.sleep(FLUSH_S)
        else:  # in-process (tests, profiling): the port must be released and the process lives on
            await self.server.stop(FLUSH_S)


def config_loader(config: Config) -> Callable[[str], Config]:
    """How a reload reads its config: the given file, or the one the server started with ("" path),
    with the running command-line values (ports, hosts, policy, ...) kept (reload.PINNED_SERVER_KEYS)."""
    pinned = {key: getattr(config.server, key) for key in PINNED_SERVER_KEYS}

    def load(path: str) -> Config:
        if not path and config.source == "<embedded default>":
            return load_config(None, **pinned)
        if not path and not Path(config.source).is_file():
            raise ReloadError(f"give a config path: this server's config ({config.source}) is no file to read again")
        return load_config(path or config.source, **pinned)

    return load


def _executors(config: Config, given: Mapping[str, Executor] | None) -> dict[str, Executor]:
    """The backends' executors, or the given ones, which must be exactly one per configured device."""
    if given is None:
        return {d.id: make_executor(d) for d in config.devices}
    missing = sorted({d.id for d in config.devices} - set(given))
    unknown = sorted(set(given) - {d.id for d in config.devices})
    if missing or unknown:
        raise ValueError(f"executors must be one per configured device: missing {missing}, not configured {unknown}")
    return dict(given)


async def serve(config: Config) -> NoReturn:
    """Run until SIGTERM or SIGINT, shut down within the grace period, then end the process."""
    server = HeddleServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:  # reload the file the server started with, as `heddle reload` does
        task = loop.create_task(_reload_logged(server))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(exiting=True)
    exit_now(0)


async def _reload_logged(server: HeddleServer) -> None:
    try:
        await server.reloader.reload("")
    except ReloadError as exc:  # the reloader logged what changed; a refusal is said here
        log.error("config reload on SIGHUP refused; still serving the old config", error=str(exc))


def exit_now(code: int) -> NoReturn:
    """End the process without joining threads: a stage stuck in operator code would hold a normal
    exit for as long as it runs (concurrent.futures joins its workers at exit), past any grace."""
    joined_by = time.monotonic() + 0.1  # idle pool workers, told to stop, are gone in microseconds
    stuck = []
    for t in threading.enumerate():
        if not t.daemon and t is not threading.current_thread():
            t.join(max(joined_by - time.monotonic(), 0.0))
            if t.is_alive():
                stuck.append(t.name)
    if stuck:
        log.warning("exiting without waiting for threads still running", threads=stuck)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
