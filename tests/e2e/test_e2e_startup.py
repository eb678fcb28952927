"""`heddle serve` as an operator starts it: exposed admin RPCs refused, taken ports and TLS files said in
one line (exit 2), TLS paths relative to the config file, junk protobuf in a few log lines, and a first
start that says what it does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import stage_fns
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki_fixtures import Pki, pki  # noqa: F401  (fixtures are found by name)
from server_fixtures import REPO_ROOT, TESTS_DIR, ServerProcess, chain_toml, py_model_toml

from heddle.clients.client import HeddleClient

TOKEN = "startup-test-token"
BODY = ('[[devices]]\nid = "py0"\nbackend = "python"\n\n'
        + py_model_toml("tail", "stage_fns:tail") + chain_toml("echo", ["tail"]))
# No token from the developer's shell may leak into a test that expects none.
NO_TOKEN_ENV = {"HEDDLE_ADMIN_TOKEN": ""}


def write_config(tmp_path: Path, server: str = "") -> Path:
    path = tmp_path / "heddle.toml"
    path.write_text(f"[server]\n{server}\n" + BODY)
    return path


def serve_once(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`heddle serve ARGS` expected to exit by itself (a refused start); HTTP on a free port unless given."""
    if "--http-port" not in args:
        args = [*args, "--http-port", "0"]
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(TESTS_DIR)}
    if "--http-port" not in args:  # a free port: the default 8000 may be taken on a shared box
        args = [*args, "--http-port", "0"]
    return subprocess.run([sys.executable, "-m", "heddle.server.cli", "serve", "--log-json", *args],
                          capture_output=True, text=True, env=full_env, cwd=REPO_ROOT, timeout=120)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture()
def held_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def started(proc: ServerProcess) -> str:
    """The loopback target of a started `heddle serve` (it may be bound to 0.0.0.0)."""
    port = proc.wait_for_event("heddle serving")["grpc"].rsplit(":", 1)[1]
    return f"127.0.0.1:{port}"


def admin_code(target: str, token: str | None = None) -> grpc.StatusCode:
    with HeddleClient(target, token=token) as client:
        try:
            client.get_policy()
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


# ---- admin RPCs beyond loopback --------------------------------------------------------------------

@pytest.mark.slow
def test_serve_on_all_interfaces_without_a_token_is_refused(tmp_path: Path):
    """--grpc-host 0.0.0.0 with no admin token: exit 2 and one line naming the ways out."""
    done = serve_once(["--config", str(write_config(tmp_path)), "--grpc-host", "0.0.0.0",
                       "--grpc-port", "0", "--metrics-port", "0"], NO_TOKEN_ENV)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("heddle: refusing to serve") and "'0.0.0.0'" in line
    assert "HEDDLE_ADMIN_TOKEN" in line and "--insecure-admin" in line


@pytest.mark.slow
def test_empty_config_token_keeps_the_environment_token(tmp_path: Path):
    """admin_token = "" in the file and HEDDLE_ADMIN_TOKEN set: it starts on 0.0.0.0 and the admin RPCs
    need that token."""
    config = write_config(tmp_path, 'admin_token = ""')
    proc = ServerProcess(["--config", str(config), "--grpc-host", "0.0.0.0", "--grpc-port", "0",
                          "--metrics-port", "0"], env={"HEDDLE_ADMIN_TOKEN": TOKEN})
    try:
        target = started(proc)
        assert admin_code(target) == grpc.StatusCode.UNAUTHENTICATED
        assert admin_code(target, TOKEN) == grpc.StatusCode.OK
    finally:
        proc.stop()


@pytest.mark.slow
def test_insecure_admin_starts_and_warns(tmp_path: Path):
    """--insecure-admin allows 0.0.0.0 with no token, with a warning line; the admin RPCs are then open."""
    proc = ServerProcess(["--config", str(write_config(tmp_path)), "--grpc-host", "0.0.0.0", "--insecure-admin",
                          "--grpc-port", "0", "--metrics-port", "0"], env=NO_TOKEN_ENV)
    try:
        target = started(proc)
        warning = next(json.loads(line) for line in proc.lines if "admin RPCs are open" in line)
        assert warning["level"] == "warning" and warning["grpc_host"] == "0.0.0.0"
        assert admin_code(target) == grpc.StatusCode.OK
    finally:
        proc.stop()


# ---- ports and TLS files ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
@pytest.mark.slow
def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path, held_port: int, flag: str):
    """A port another program holds: exit 2 and one line naming the port, no traceback."""
    ports = {"--grpc-port": "0", "--metrics-port": "0", flag: str(held_port)}
    done = serve_once(["--config", str(write_config(tmp_path)), *[x for kv in ports.items() for x in kv]])
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"127.0.0.1:{held_port}" in line and "already in use" in line and flag in line


@pytest.mark.slow
def test_missing_tls_file_is_one_line_and_exit_2(tmp_path: Path):
    """A [server.tls] cert that does not exist: exit 2 and one line naming the file, resolved beside the config."""
    config = write_config(tmp_path, '[server.tls]\ncert = "missing.pem"\nkey = "missing.key"')
    done = serve_once(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0"])
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert str((tmp_path / "missing.pem").resolve()) in line and "does not exist" in line


@pytest.mark.slow
def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path, pki: Pki):
    """cert and key named relative to the config file are found although the server runs elsewhere."""
    shutil.copy(pki.server_cert, tmp_path / "server.pem")
    shutil.copy(pki.server_key, tmp_path / "server.key")
    config = write_config(tmp_path, '[server.tls]\ncert = "server.pem"\nkey = "server.key"')
    assert Path.cwd() != tmp_path and REPO_ROOT != tmp_path
    proc = ServerProcess(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0"])
    try:
        port = started(proc).rsplit(":", 1)[1]
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.stop()


# ---- junk protobuf ----------------------------------------------------------------------------------

JUNK_METHODS = ("/heddle.v1.Gateway/Infer", "/inference.GRPCInferenceService/ModelInfer")


@pytest.mark.slow
def test_junk_protobuf_is_logged_in_a_few_lines_and_serving_goes_on(tmp_path: Path):
    """200 junk messages to each of Infer and KServe ModelInfer: a few warning lines naming the method, no traceback,
    and echo is still served."""
    proc = ServerProcess(["--config", str(write_config(tmp_path)), "--grpc-port", "0", "--metrics-port", "0"])
    try:
        target = started(proc)
        first_junk_line = len(proc.lines)
        with grpc.insecure_channel(target) as channel:
            for method in JUNK_METHODS:
                call = channel.unary_unary(method)  # no serializers: the bytes go out as they are
                for i in range(200):
                    with pytest.raises(grpc.RpcError):
                        call(b"\xff\xfe junk %d" % i, timeout=10)
        with HeddleClient(target) as client:
            np.testing.assert_array_equal(client.infer("echo", {"x": stage_fns.tagged(5)}).outputs["y"], [5.0])
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()
    logged = proc.lines[first_junk_line:]
    assert "Traceback" not in "".join(logged)
    warnings = [json.loads(line) for line in logged if JUNK_METHODS[0] in line]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["event"] == "undecodable request"
    # Before: a ~2 KB traceback per message (800 KB here). A line per 10 s leaves a handful.
    assert len(logged) <= 20, "".join(logged)


# ---- what a first start says ------------------------------------------------------------------------

@pytest.mark.slow
def test_first_start_names_each_model_it_builds_and_sums_up_power_in_one_line(tmp_path: Path):
    """On the embedded default with an empty cache: a line per demo model built, one power line at info,
    then serving."""
    proc = ServerProcess(["--grpc-port", "0", "--metrics-port", "0"], env={"HEDDLE_CACHE_DIR": str(tmp_path)})
    try:
        started(proc)
        records = [json.loads(line) for line in proc.lines if line.startswith("{")]
    finally:
        proc.stop()
    built = [r["event"] for r in records if r["event"].startswith("building demo model")]
    assert len(built) == len(list((tmp_path / "models").glob("*.onnx"))) == 8  # the zoo, detector included
    assert all(f"into {tmp_path / 'models'} (first run only)" in line for line in built)
    power = [r for r in records if r["logger"] == "heddle.power" and r["level"] == "info"]
    assert [r["event"] for r in power] == ["power sensing"] and power[0]["not_used"], power
