"""End-to-end fixtures: a real HeddleServer on a background event loop, or as a `heddle serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heddle.clients.client import HeddleClient
from heddle.server.app import HeddleServer
from heddle.server.config.builder import pipeline, python_model, stage, tensor, to_toml
from heddle.server.config.default import TOKENIZER_MODELS_TOML
from heddle.server.config.load import Config, load_config, parse_config, parse_document

__all__ = [
    "REPO_ROOT", "TESTS_DIR", "TOKENIZER_MODELS_TOML", "RunningServer", "ServerProcess", "chain", "chain_toml",
    "default_client", "default_config", "default_server", "heddle_cache_dir", "parse_test_config",
    "parse_test_document", "py_model", "py_model_toml", "running_server", "scale_onnx", "scrape_metrics",
    "serve_document",
    "serve_toml", "wait_until",
]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# Upper bound for anything a test waits on; only reached when something is broken.
WAIT_S = 20.0


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A started HeddleServer and the event loop (on its own thread) that drives it."""

    server: HeddleServer
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def client(self, **kwargs: Any) -> HeddleClient:
        return HeddleClient(self.target, **kwargs)


async def _start(config: Config, server_kwargs: Mapping[str, Any]) -> HeddleServer:
    # Built inside the loop: grpc.aio and the health servicer bind to the running loop.
    server = HeddleServer(config, **server_kwargs)
    await server.start()
    return server


@contextmanager
def running_server(config: Config, *, grace_s: float = 1.0, **server_kwargs: Any) -> Iterator[RunningServer]:
    """Start a gateway for `config` on a fresh loop thread; stop it (grace_s) and the loop after.
    server_kwargs go to HeddleServer (executors=, clock=: heddle.server.testing)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="heddle-test-loop", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(_start(config, server_kwargs), loop).result(WAIT_S * 3)
        try:
            yield RunningServer(server, loop)
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(grace_s), loop).result(WAIT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def parse_test_config(text: str, base_dir: Path | None = None, **overrides: Any) -> Config:
    """Parse TOML text as a test config: free ports (0) unless overridden."""
    overrides = {"grpc_port": 0, "metrics_port": 0, "http_port": 0, **overrides}
    return parse_config(text, "<test config>", base_dir or TESTS_DIR, overrides)


def parse_test_document(doc: Mapping[str, Any], base_dir: Path | None = None, **overrides: Any) -> Config:
    """A test config from a document (heddle.server.config.builder): free ports (0) unless overridden."""
    overrides = {"grpc_port": 0, "metrics_port": 0, "http_port": 0, **overrides}
    return parse_document(doc, "<test config>", base_dir or TESTS_DIR, overrides)


@contextmanager
def serve_toml(text: str, **overrides: Any) -> Iterator[RunningServer]:
    """A running gateway for a TOML config text (ports 0)."""
    with running_server(parse_test_config(text, **overrides)) as running:
        yield running


@contextmanager
def serve_document(doc: Mapping[str, Any], **overrides: Any) -> Iterator[RunningServer]:
    """A running gateway for a config document (heddle.server.config.builder; ports 0)."""
    with running_server(parse_test_document(doc, **overrides)) as running:
        yield running


def py_model(name: str, function: str, *, inputs: Sequence[str] = ("x",), devices: Sequence[str] = (),
             **keys: Any) -> dict[str, Any]:
    """A python-backend model taking FP32 [N] inputs and returning FP32 [N] "y" (more keys as given)."""
    return python_model(name, function, [tensor(i) for i in inputs], [tensor("y")], devices=devices, **keys)


def py_model_toml(name: str, function: str, *, inputs: Sequence[str] = ("x",), devices: Sequence[str] = (),
                  **keys: Any) -> str:
    """py_model as TOML text, for configs written as text."""
    return to_toml({"models": [py_model(name, function, inputs=inputs, devices=devices, **keys)]}) + "\n"


def chain(name: str, models: Sequence[str]) -> dict[str, Any]:
    """A linear pipeline x -> models[0] -> models[1] ... -> y, over models taking x and giving y."""
    stages = [stage(f"s{i}", model, x="input:x" if i == 0 else f"s{i - 1}.y") for i, model in enumerate(models)]
    return pipeline(name, [tensor("x")], {"y": f"s{len(models) - 1}.y"}, stages)


def chain_toml(name: str, models: Sequence[str]) -> str:
    """chain as TOML text, for configs written as text."""
    return to_toml({"pipelines": [chain(name, models)]}) + "\n"


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll predicate (every 5 ms) until true; fail the test naming `what` after timeout_s.

    Only for state no event announces (a server's queue lengths as ListDevices reports them).
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def scrape_metrics(url: str) -> dict[tuple[str, frozenset], float]:
    """GET a Prometheus endpoint: {(sample name, frozenset of label items): value}."""
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class ServerProcess:
    """`heddle serve` as a child process with JSON logs; stderr lines are collected by a thread."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        if "--http-port" not in args:  # a free port: tests run side by side, and 8000 may be taken
            args = [*args, "--http-port", "0"]
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), full_env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heddle.server.cli", "serve", "--log-json", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO_ROOT)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of stream
            self._cond.notify_all()

    def wait_for_event(self, event: str, timeout_s: float = WAIT_S * 3) -> dict[str, Any]:
        """The first JSON log record whose event is `event`; fails if the process ends first."""
        def found():
            for line in self.lines:
                if line == "":
                    return {}
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == event:
                    return record
            return None
        with self._cond:
            record = self._cond.wait_for(found, timeout=timeout_s)
        if not record:
            pytest.fail(f"server never logged {event!r}; stderr:\n{''.join(self.lines)}")
        return record

    def stop(self) -> None:
        """Kill it if still running (teardown for a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT_S)
        self._reader.join(WAIT_S)


# ---- the embedded default config, one server per session ----------------------------------
_SESSION: dict[str, RunningServer] = {}


@pytest.fixture(scope="session")
def heddle_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per session (a fixed path, so every module importing this fixture shares it)."""
    path = tmp_path_factory.getbasetemp() / "heddle-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_config(heddle_cache_dir: Path) -> Config:
    """The embedded default config, with HEDDLE_CACHE_DIR at the session cache and free ports."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEDDLE_CACHE_DIR", str(heddle_cache_dir))
        return load_config(None, grpc_port=0, metrics_port=0, http_port=0)


@pytest.fixture(scope="session")
def default_server(default_config: Config) -> Iterator[RunningServer]:
    """One gateway on the default config for the whole session.

    pytest makes one fixture instance per module that imports a fixture, so the first
    instance starts the server and later ones reuse it.
    """
    if "default" in _SESSION:
        yield _SESSION["default"]
        return
    with running_server(default_config) as running:
        _SESSION["default"] = running
        try:
            yield running
        finally:
            del _SESSION["default"]


@pytest.fixture()
def default_client(default_server: RunningServer) -> Iterator[HeddleClient]:
    with default_server.client() as client:
        yield client


def scale_onnx(path: Path, k: float) -> str:
    """Write y = x * k (FP32 [n]) to `path`, whole or not at all (as an operator's deploy step would):
    a model whose versions or rewrites a test tells apart by k. Returns the path."""
    import onnx

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    k_init = onnx.helper.make_tensor("k", onnx.TensorProto.FLOAT, [1], [k])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k_init])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return str(path)
