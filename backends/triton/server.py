"""Runs the real Triton Inference Server shipped in the nvidia-pytriton wheel, CPU-only, on loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heddle.backends.triton.repo import model_config_text, write_onnx_python_model, write_python_model

__all__ = [
    "TritonInstall",
    "TritonServer",
    "TritonServerError",
    "find_triton",
    "free_port",
    "model_config_text",
    "write_onnx_python_model",
    "write_python_model",
]


_PORT_ATTEMPTS = 3


class TritonServerError(RuntimeError):
    """The Triton server could not be prepared, started or reached; the message says why."""


@dataclass(frozen=True, slots=True)
class TritonInstall:
    """Where the pieces of the nvidia-pytriton wheel lie."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self) -> Path:
        """The python-backend stub built for the running interpreter's version."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_triton() -> TritonInstall | None:
    """The nvidia-pytriton install usable from this interpreter, or None when it is absent."""
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    install = TritonInstall(root, libs)
    if not install.binary.is_file() or not install.stub().is_file():
        return None
    return install


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it; a race with others is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_work_dir(install: TritonInstall, work_dir: Path) -> None:
    """backends/ and caches/ copied beside each other, with the stub the python backend looks for."""
    backends = work_dir / "backends"
    if not (backends / "python" / "triton_python_backend_stub").is_file():
        shutil.copytree(install.root / "backends", backends, dirs_exist_ok=True)
        # The wheel keeps stubs per Python version; the backend expects one next to its .so.
        shutil.copy2(install.stub(), backends / "python" / "triton_python_backend_stub")
    if not (work_dir / "caches").is_dir():
        shutil.copytree(install.root / "caches", work_dir / "caches", dirs_exist_ok=True)


def _environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    # The stub runs `python3` from PATH: it must be this interpreter's, which sees onnxruntime.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The stub links against libpython; without the wheel's own libs the server hangs instead of exiting.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libdirs if p)
    return env


class TritonServer:
    """One tritonserver process serving `repository`: a context manager, or start()/stop().

    Ports are picked free on 127.0.0.1 (the gRPC one may be fixed with `grpc_port`, for a server
    that must come up where clients already look for it); `grpc_url` ("host:port", what
    tritonclient.grpc takes) and `http_url` ("http://host:port") are known once started. The
    server log goes to `log_path` (in the work dir unless given) and its tail is quoted when start
    fails.
    """

    def __init__(self, repository: str | os.PathLike, *, work_dir: str | os.PathLike | None = None,
                 ready_timeout_s: float = 60.0, extra_args: Sequence[str] = (),
                 install: TritonInstall | None = None, auto_complete_config: bool = False,
                 grpc_port: int = 0) -> None:
        self.repository = Path(repository).resolve()
        self.install = install or find_triton()
        if self.install is None:
            raise TritonServerError("tritonserver is not available: install nvidia-pytriton (the `test` extra)")
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="heddle-triton-")).resolve()
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = tuple(extra_args)
        self.auto_complete_config = auto_complete_config
        self.log_path = self.work_dir / "tritonserver.log"
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._fixed_grpc_port = grpc_port  # 0: a free one at each start
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _command(self) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.work_dir / 'backends'}",
            f"--cache-directory={self.work_dir / 'caches'}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true",
            # Auto-complete launches one extra stub per model just to ask it for its config
            # (~1.3 s each here); the configs we write are complete.
            *([] if self.auto_complete_config else ["--disable-auto-complete-config"]),
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Start the server and block until it reports ready; TritonServerError (with its log) otherwise."""
        if self.process is not None:
            raise TritonServerError("this TritonServer is already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _prepare_work_dir(self.install, self.work_dir)
        started = time.monotonic()
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._launch(started + self.ready_timeout_s)
                break
            except TritonServerError as e:
                # Free ports are picked before the server binds them: another process may win the race.
                if "already in use" not in str(e) or attempt == _PORT_ATTEMPTS - 1:
                    self._cleanup()
                    raise
        self.startup_s = time.monotonic() - started
        return self

    def _launch(self, deadline: float) -> None:
        self.grpc_port = self._fixed_grpc_port or free_port()
        self.http_port, self.metrics_port = free_port(), free_port()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, env=_environment(self.install),
                start_new_session=True,  # a Ctrl-C aimed at pytest must not kill it before stop() runs
            )
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self, deadline: float) -> None:
        # No readiness event exists to wait on: poll the HTTP ready endpoint, bounded by the deadline.
        url = f"{self.http_url}/v2/health/ready"
        while True:
            code = self.process.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with status {code} while starting:\n{self.log_tail()}{_hint()}"
                )
            if self._bound() and _http_ok(url):
                return
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}{_hint()}"
                )
            time.sleep(0.05)

    def _bound(self) -> bool:
        # Our process logs these only once it holds the ports: a ready answer from another
        # process that won the race for a port must not pass for ours.
        log = self.log_path.read_text(errors="replace")
        return (f"Started GRPCInferenceService at 127.0.0.1:{self.grpc_port}" in log
                and f"Started HTTPService at 127.0.0.1:{self.http_port}" in log)

    def is_ready(self) -> bool:
        """The server answers ready on its HTTP endpoint now."""
        return self.process is not None and _http_ok(f"{self.http_url}/v2/health/ready")

    def log_tail(self, num_lines: int = 15) -> str:
        """The server's error lines (Triton prefixes them with E), then the last num_lines lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        tail = lines[-num_lines:]
        errors = [line for line in lines[:-num_lines] if line.startswith("E") and line[1:5].isdigit()]
        return "\n".join([*errors[-10:], *(["..."] if errors else []), *tail])

    def kill(self) -> None:
        """SIGKILL the server and its model stubs now (a crash, for tests); stop() afterwards only reaps it.

        The whole process group goes, as in a crash of the box: a python-backend stub whose server
        was killed alone can hang forever (seen with 2.51, stubs of the ONNX models)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # start_new_session made it the group's leader
            self.process.wait()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after grace_s; removes a work dir it created itself."""
        self._terminate(grace_s)
        self._cleanup()

    def _terminate(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()

    def _cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _hint() -> str:
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return ""
    # The python-backend stub links libpython3.X.so; a static interpreter cannot lend it one.
    return "\n(hint: this Python has no shared libpython, which the python-backend stub needs)"


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
