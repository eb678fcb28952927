"""Tests for the Triton launcher and repository writer, against the real tritonserver binary."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import tritonclient.grpc as tgrpc
from triton_fixtures import (  # noqa: F401  (fixtures are found by name)
    LLM_ON_TRITON,
    ZOO_ON_TRITON,
    require_triton,
    triton_server,
)

from heddle.backends.triton.server import (
    TritonServer,
    TritonServerError,
    find_triton,
    model_config_text,
    write_python_model,
)
from heddle.scheduler.specs import TensorSpec

# Each test here starts or talks to a real tritonserver (`make test-fast` leaves them out).
pytestmark = pytest.mark.triton


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_find_triton_locates_binary_and_stub() -> None:
    """The wheel's tritonserver binary and the stub for this Python version are found."""
    require_triton()
    install = find_triton()
    assert install is not None
    assert install.binary.is_file() and install.stub().is_file()
    assert install.libs.is_dir()


def test_session_server_is_ready_with_every_model(triton_server: TritonServer) -> None:
    """The session server answers ready on HTTP and gRPC, and every model in its repository is READY."""
    assert triton_server.is_ready()
    assert triton_server.startup_s is not None and triton_server.startup_s > 0
    with tgrpc.InferenceServerClient(triton_server.grpc_url) as client:
        assert client.is_server_ready()
        index = client.get_model_repository_index()
    states = {m.name: m.state for m in index.models}
    assert states == {name: "READY" for name in (*ZOO_ON_TRITON, *LLM_ON_TRITON, "echo", "gate", "countdown")}


def test_written_onnx_model_config_is_served(triton_server: TritonServer) -> None:
    """write_onnx_python_model's config reaches the server: batching on, batch dim left out of dims."""
    with tgrpc.InferenceServerClient(triton_server.grpc_url) as client:
        config = client.get_model_config("cnn").config
        meta = client.get_model_metadata("cnn")
    assert config.backend == "python" and config.max_batch_size == 64
    assert list(config.input[0].dims) == [3, 64, 64]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [-1, 3, 64, 64])]


def test_model_config_text_needs_a_dynamic_batch_dim() -> None:
    """With max_batch_size > 0 a tensor whose first dim is fixed is refused, naming the tensor."""
    with pytest.raises(ValueError, match="x"):
        model_config_text("m", [TensorSpec("x", "FP32", (2, 4))], [], max_batch_size=4)


def test_model_config_text_writes_priority_and_timeouts_only_when_asked() -> None:
    """The dynamic batcher gets priority levels and a queue policy only when asked for them."""
    spec = [TensorSpec("x", "FP32", (-1, 4))]
    plain = model_config_text("m", spec, spec, max_batch_size=4)
    full = model_config_text("m", spec, spec, max_batch_size=4, priority_levels=3, request_timeouts=True)
    assert "dynamic_batching {  }" in plain and "priority_levels" not in plain
    assert "priority_levels: 3 default_priority_level: 3" in full
    assert "allow_timeout_override: true" in full


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    """A repository with a broken model makes start() fail fast with the server's log, leaving no process."""
    require_triton()
    write_python_model(tmp_path / "repo", "broken", "", 'name: "broken"\nbackend: "python"\nthis is not pbtxt\n')
    server = TritonServer(tmp_path / "repo", ready_timeout_s=60)
    with pytest.raises(TritonServerError, match="broken"):
        server.start()
    assert server.process is None


def test_stop_ends_the_process_and_frees_ports(tmp_path: Path) -> None:
    """stop() ends the server, its ports stop accepting and the work dir it made itself is gone."""
    require_triton()
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo").start()
    process, work_dir = server.process, server.work_dir
    assert _accepts(server.grpc_port) and (work_dir / "backends" / "python").is_dir()
    server.stop()
    assert process.returncode is not None
    assert not _accepts(server.grpc_port) and not _accepts(server.http_port)
    assert not work_dir.exists()


def test_start_retries_when_a_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When another process takes a picked port first, start() picks new ports and the server comes up."""
    require_triton()
    import heddle.backends.triton.server as launcher

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = [busy.getsockname()[1]]
        pick = launcher.free_port
        monkeypatch.setattr(launcher, "free_port", lambda: taken.pop() if taken else pick())
        (tmp_path / "repo").mkdir()
        with TritonServer(tmp_path / "repo") as server:
            assert server.is_ready()
            assert busy.getsockname()[1] not in (server.grpc_port, server.http_port, server.metrics_port)
