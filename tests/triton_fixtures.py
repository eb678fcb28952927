"""A real Triton server for tests: repositories of zoo and probe models, a gate to hold a model busy, fixtures."""

from __future__ import annotations

import os
import re
import select
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.repo import HOLD_PY, write_llm_python_model
from heddle.backends.triton.server import (
    TritonServer,
    find_triton,
    model_config_text,
    write_onnx_python_model,
    write_python_model,
)
from heddle.backends.zoo.build import build_model
from heddle.scheduler.specs import TensorSpec

__all__ = [
    "LLM_ON_TRITON", "LLM_TOKEN_DELAY_S", "ZOO_ON_TRITON", "Gate", "build_probe_repository", "build_repository",
    "pending_requests", "require_triton", "triton_llm_path", "triton_server", "triton_zoo_paths", "wait_until",
    "write_gate_model", "write_llm_models", "write_zoo_models",
]

ZOO_ON_TRITON = ("cnn", "head_cls", "head_emb", "backbone", "text_cls")
LLM_ON_TRITON = ("llm", "llm_slow")  # decoupled LLMs (write_llm_models)
# llm_slow sleeps this long after each token: a test acts mid-generation (a cancel, a kill) long
# before a generation of hundreds of tokens could end, however loaded the box.
LLM_TOKEN_DELAY_S = 0.02

# echo: answers what the server made of the request (timeout in us, custom parameters);
# a negative input makes it fail with a message, to see model errors come back.
ECHO_PY = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if float(x.reshape(-1)[0]) < 0:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("echo: x is negative")))
                continue
            info = json.dumps({"timeout_us": r.timeout(), "parameters": json.loads(r.parameters())})
            info_out = np.array([[info.encode()]] * x.shape[0], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("info", info_out)]))
        return responses
'''

# gate: one instance; executes requests one at a time and numbers them in execution order. A
# request tagged 0 holds the instance until the test releases it, through two FIFOs in the model dir.
GATE_PY = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.dir = args["model_repository"]
        self.count = 0

    def execute(self, requests):
        responses = []
        for r in requests:
            tag = pb_utils.get_input_tensor_by_name(r, "tag").as_numpy()
            if int(tag.reshape(-1)[0]) == 0:
                hold(self.dir)
            self.count += 1
            seq = np.full(tag.shape, self.count, dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("seq", seq)]))
        return responses
''' + HOLD_PY

# countdown (decoupled): answers n responses i = 0..n-1 to one request, then the final flag, and
# stops early when the request is cancelled. n = -1 asks how many the previous request got sent.
COUNTDOWN_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.last_sent = 0

    def _send(self, sender, i):
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("i", np.array([i], dtype=np.int32))]))

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(r, "n").as_numpy().reshape(-1)[0])
            if n < 0:
                self._send(sender, self.last_sent)
            else:
                self.last_sent = 0
                for i in range(n):
                    if r.is_cancelled():
                        break
                    self._send(sender, i)
                    self.last_sent += 1
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def write_gate_model(repo: Path) -> None:
    """The gate model (tag INT32 [-1, 1] -> seq INT64 [-1, 1], 2 priority levels) and its FIFOs."""
    t = TensorSpec
    gate = write_python_model(repo, "gate", GATE_PY, model_config_text(
        "gate", [t("tag", "INT32", (-1, 1))], [t("seq", "INT64", (-1, 1))],
        max_batch_size=1, priority_levels=2, request_timeouts=True))
    os.mkfifo(gate / "started.fifo")
    os.mkfifo(gate / "release.fifo")


def build_probe_repository(repo: Path) -> None:
    """The probe models: echo, gate (with its FIFOs) and countdown."""
    t = TensorSpec
    write_python_model(repo, "echo", ECHO_PY, model_config_text(
        "echo", [t("x", "FP32", (-1, 1))], [t("info", "BYTES", (-1, 1))],
        max_batch_size=8, priority_levels=2, request_timeouts=True))
    write_gate_model(repo)
    write_python_model(repo, "countdown", COUNTDOWN_PY, model_config_text(
        "countdown", [t("n", "INT32", (1,))], [t("i", "INT32", (1,))], decoupled=True))


def write_zoo_models(repo: Path, models_dir: Path, names: tuple[str, ...] = ZOO_ON_TRITON) -> dict[str, Path]:
    """Zoo models (built into models_dir) as python-backend ORT models; their ONNX files by name."""
    paths = {}
    for name in names:
        paths[name] = path = build_model(name, models_dir)
        inputs, outputs = read_io_spec(path)
        write_onnx_python_model(repo, name, path, inputs, outputs)
    return paths


def write_llm_models(repo: Path, models_dir: Path, names: tuple[str, ...] = LLM_ON_TRITON,
                     hold: tuple[str, ...] = ()) -> Path:
    """The zoo's KV-cache decoder as decoupled python-backend LLMs (backends/triton/repo.py
    LLM_MODEL_PY): `llm`, and `llm_slow` (LLM_TOKEN_DELAY_S after each token); the ONNX file.
    Models in `hold` get the gate's FIFOs: with a Gate(server, name) listening, a generation
    holds before its first token."""
    path = build_model("llm", models_dir)
    for name in names:
        folder = write_llm_python_model(repo, name, path,
                                        token_delay_s=LLM_TOKEN_DELAY_S if name == "llm_slow" else 0.0)
        if name in hold:
            os.mkfifo(folder / "started.fifo")
            os.mkfifo(folder / "release.fifo")
    return path


def build_repository(repo: Path, models_dir: Path) -> None:
    """Zoo models as python-backend ORT models, the decoupled LLMs, plus the probe models."""
    write_zoo_models(repo, models_dir)
    write_llm_models(repo, models_dir)
    build_probe_repository(repo)


def require_triton() -> None:
    if find_triton() is None:
        pytest.skip("tritonserver is not available: install nvidia-pytriton (the `test` extra; x86_64, Python 3.11)")


# Test modules import the fixture by name, so pytest sees one session fixture per module; this
# module is imported once, so its state makes them all share one server, stopped by the last user.
_shared: dict[str, object] = {"server": None, "users": 0}


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One Triton server for the session, serving the zoo models and the probe models."""
    require_triton()
    if _shared["server"] is None:
        root = tmp_path_factory.mktemp("triton")
        build_repository(root / "repo", root / "models")
        # 180 s, not the launcher's 60: loading every zoo and probe model (python backends, a stub
        # process each) on a 2-core box busy with the rest of the suite has taken past 60 s, and
        # then every Triton test of the session fails at once.
        _shared["server"] = TritonServer(root / "repo", work_dir=root / "work", ready_timeout_s=180.0).start()
    _shared["users"] += 1
    try:
        yield _shared["server"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["server"].stop()
            _shared["server"] = None


@pytest.fixture(scope="session")
def triton_zoo_paths(triton_server: TritonServer) -> dict[str, Path]:
    """The ONNX files behind the session server's zoo models (already built: this only finds them)."""
    models_dir = triton_server.repository.parent / "models"
    return {name: build_model(name, models_dir) for name in ZOO_ON_TRITON}


@pytest.fixture(scope="session")
def triton_llm_path(triton_server: TritonServer) -> Path:
    """The ONNX decoder behind the session server's `llm` and `llm_slow` (already built: this finds it)."""
    return build_model("llm", triton_server.repository.parent / "models")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until true; for server state that offers no event to wait on. Bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.01)


def pending_requests(server: TritonServer, model: str) -> int:
    """Requests queued (not executing) for `model`, from the server's Prometheus gauge."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^nv_inference_pending_request_count{{model="{model}",version="1"}} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


class Gate:
    """The test's side of the gate model (or of an LLM model given hold FIFOs): know when the held
    request runs, then release it."""

    def __init__(self, server: TritonServer, model: str = "gate") -> None:
        self.dir = server.repository / model

    def __enter__(self) -> Gate:
        # Listening before the held request is sent: the model only holds when someone listens.
        self._started = os.open(self.dir / "started.fifo", os.O_RDONLY | os.O_NONBLOCK)
        return self

    def wait_started(self, timeout_s: float = 30.0) -> None:
        readable, _, _ = select.select([self._started], [], [], timeout_s)
        if not readable:
            raise TimeoutError(f"the held request did not start within {timeout_s} s")
        os.read(self._started, 1)

    def release(self) -> None:
        fd = os.open(self.dir / "release.fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"r")
        os.close(fd)

    def __exit__(self, *exc: object) -> None:
        os.close(self._started)
