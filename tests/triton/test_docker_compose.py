"""Tests for docker/'s compose files: they parse and hang together, their heddle configs load, the Triton
repository they serve matches those configs, and the compose config runs its pipelines on a real Triton."""

from __future__ import annotations

import json
import re
import runpy

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from server_fixtures import running_server
from triton_fixtures import triton_server  # noqa: F401  (fixtures are found by name)
from tritonclient.grpc import model_config_pb2

from heddle.scheduler.specs import TensorSpec
from heddle.server.config.load import Config, parse_config

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
COMPOSE_GPU = DOCKER_DIR / "compose.gpu.yaml"
HEDDLE_TOML = DOCKER_DIR / "heddle-compose.toml"
HEDDLE_GPU_TOML = DOCKER_DIR / "heddle-compose-gpu.toml"
MULTIBOX = REPO / "docs" / "MULTIBOX.md"
TRITON_MODELS = runpy.run_path(str(DOCKER_DIR / "triton_models.py"))  # docker/ is no package

# ---- a reader for the block-YAML subset the compose files keep to (PyYAML is no dependency) ----
_KEY = re.compile(r"([A-Za-z0-9_.-]+):(?:[ ]+(.*))?")


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line.rstrip()


_PLAIN = {"true": True, "false": False, "null": None}


def _scalar(text: str) -> Any:
    """Flow collections and double-quoted strings as JSON, single-quoted as YAML; plain integers and
    true/false/null typed as YAML types them; any other plain scalar is a string."""
    if text[:1] in "[{\"":
        return json.loads(text)
    if text[:1] == "'":
        return text[1:-1].replace("''", "'")
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    return _PLAIN.get(text, text)


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict, int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        match = _KEY.fullmatch(lines[i][1])
        if match is None or match.group(1) in out:
            raise ValueError(f"not a new `key: value` line: {lines[i][1]!r}")
        key, value = match.groups()
        if value is not None:
            out[key], i = _scalar(value), i + 1
        elif i + 1 < len(lines) and lines[i + 1][0] > indent:
            out[key], i = _block(lines, i + 1, lines[i + 1][0])
        else:
            out[key], i = None, i + 1
    return out, i


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list, int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
        item = lines[i][1][2:]
        if _KEY.fullmatch(item) and item[:1] not in "\"'[{":  # a mapping opens on the dash line
            lines[i] = (indent + 2, item)
            value, i = _mapping(lines, i, indent + 2)
        else:
            value, i = _scalar(item), i + 1
        out.append(value)
    return out, i


def read_yaml_subset(text: str) -> Any:
    """Block mappings and sequences, JSON-style flow values, comments; ValueError for anything else."""
    lines = []
    for raw in text.splitlines():
        if "\t" in raw:
            raise ValueError(f"tab in {raw!r}")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
    value, i = _block(lines, 0, 0)
    if i != len(lines):
        raise ValueError(f"unexpected indentation at {lines[i][1]!r}")
    return value


def load_compose(path: Path) -> dict:
    """A compose file read with the subset reader, and checked against PyYAML where it is installed."""
    text = path.read_text()
    data = read_yaml_subset(text)
    try:
        import yaml
    except ImportError:
        return data
    assert yaml.safe_load(text) == data, f"{path.name} uses YAML the subset reader reads differently"
    return data


def test_yaml_subset_reader_reads_what_the_compose_files_use() -> None:
    """Nested mappings, sequences of scalars and of mappings, flow values, quotes and comments come out as YAML says."""
    text = """# head
a:
  b: plain value  # trailing
  c: ["x", "y # not a comment"]
  d:
    - "8001:8001"
    - '127.0.0.1:9001'
    - k: v
      n: {}
  e:
f: ${VAR:-}
g: [3, true]
h: 3
i: false
j: 0.0.0.0
"""
    assert read_yaml_subset(text) == {
        "a": {"b": "plain value", "c": ["x", "y # not a comment"],
              "d": ["8001:8001", "127.0.0.1:9001", {"k": "v", "n": {}}], "e": None},
        "f": "${VAR:-}", "g": [3, True], "h": 3, "i": False, "j": "0.0.0.0",
    }
    for bad in ("a:\n  b: 1\n c: 2\n", "a: 1\na: 2\n", "a:\n\tb: 1\n"):
        with pytest.raises(ValueError):
            read_yaml_subset(bad)


# ---- the compose files ---------------------------------------------------------------------------
def _bind_sources(service: dict) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if v.startswith("./")]


def _named_volumes(service: dict) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if not v.startswith(("./", "/"))]


def _mount_target(service: dict, source: str) -> str:
    [target] = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == source]
    return target


def test_compose_starts_models_then_triton_then_heddle() -> None:
    """Triton waits for the model repository to be written, heddle for both and for Triton to be healthy."""
    services = load_compose(COMPOSE)["services"]
    assert set(services) == {"models", "triton", "heddle"}
    assert services["triton"]["depends_on"] == {"models": {"condition": "service_completed_successfully"}}
    assert services["heddle"]["depends_on"] == {
        "models": {"condition": "service_completed_successfully"},
        "triton": {"condition": "service_healthy"},
    }
    assert services["triton"]["healthcheck"]["test"][0] == "CMD"
    assert "/v2/health/ready" in " ".join(services["triton"]["healthcheck"]["test"])


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_names_files_and_volumes_that_exist(path: Path) -> None:
    """Every bind-mounted file and Dockerfile exists, and every named volume is declared in compose.yaml."""
    declared = set(load_compose(COMPOSE)["volumes"])
    for name, service in load_compose(path)["services"].items():
        for source in _bind_sources(service):
            assert (DOCKER_DIR / source).is_file(), f"{name}: {source}"
        assert set(_named_volumes(service)) <= declared, name
        if "build" in service:
            # compose.yaml's context is the repository root; an override inherits it.
            assert load_compose(COMPOSE)["services"][name]["build"]["context"] == ".."
            assert (REPO / service["build"]["dockerfile"]).is_file(), name


def test_compose_services_agree_on_paths_and_ports() -> None:
    """The cache volume is where the config and the repository writer look; heddle serves its mounted config."""
    services = load_compose(COMPOSE)["services"]
    models, triton, heddle = services["models"], services["triton"], services["heddle"]
    cache = _mount_target(heddle, "heddle-cache")
    assert models["command"] == [_mount_target(models, "heddle-cache")] == [cache]
    assert models["entrypoint"][1] == _mount_target(models, "./triton_models.py")
    assert f"--model-repository={_mount_target(triton, 'heddle-cache')}/triton-repo" in triton["command"]
    # Read as TOML: loading the config would build its models into that (container) path here.
    assert tomllib.loads(HEDDLE_TOML.read_text())["server"]["cache_dir"] == cache
    command = heddle["command"]
    assert command[0] == "serve"
    assert command[command.index("--config") + 1] == _mount_target(heddle, "./heddle-compose.toml")
    assert command[command.index("--grpc-host") + 1] == "0.0.0.0"
    assert {"8001:8001", "8002:8002"} <= set(heddle["ports"])


def test_gpu_override_gives_gpus_and_swaps_in_the_cuda_image_and_config() -> None:
    """With compose.gpu.yaml, heddle runs heddle:cuda with the GPU config, and heddle and Triton reserve GPUs."""
    base, gpu = load_compose(COMPOSE)["services"], load_compose(COMPOSE_GPU)["services"]
    assert set(gpu) <= set(base)
    for name in ("models", "heddle"):
        assert gpu[name]["image"] == "heddle:cuda"
        assert gpu[name]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    # Compose merges service volumes by target: the GPU config must replace the CPU one.
    gpu_config = _mount_target(gpu["heddle"], "./heddle-compose-gpu.toml")
    assert gpu_config == _mount_target(base["heddle"], "./heddle-compose.toml")
    for name in ("triton", "heddle"):
        [device] = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


# ---- the heddle configs compose mounts -----------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for this module's configs (built-in models are built at parse time)."""
    return tmp_path_factory.mktemp("compose-cache")


def parse_toml_config(path: Path, cache: Path, text: str | None = None) -> Config:
    """The config in `path` (or `text`, read as if from there) with its models built into `cache`, free ports."""
    overrides = {"grpc_port": 0, "metrics_port": 0, "http_port": 0, "cache_dir": str(cache)}
    return parse_config(path.read_text() if text is None else text, str(path), path.parent, overrides)


def test_compose_configs_load_and_differ_only_by_the_gpu_device(cache_dir: Path) -> None:
    """Both heddle configs load; the GPU one is the CPU one plus an ONNX Runtime CUDA device."""
    cpu, gpu = parse_toml_config(HEDDLE_TOML, cache_dir), parse_toml_config(HEDDLE_GPU_TOML, cache_dir)
    assert dict(gpu.models) == dict(cpu.models)
    assert dict(gpu.pipelines) == dict(cpu.pipelines)
    [extra] = [d for d in gpu.devices if d not in cpu.devices]
    assert [d for d in gpu.devices if d != extra] == list(cpu.devices)
    assert extra.backend == "onnxruntime" and extra.options["providers"][0] == "CUDAExecutionProvider"


def test_compose_config_points_its_triton_device_at_the_triton_service(cache_dir: Path) -> None:
    """The triton device's url is the compose service's name and Triton's gRPC port."""
    [device] = [d for d in parse_toml_config(HEDDLE_TOML, cache_dir).devices if d.backend == "triton"]
    services = load_compose(COMPOSE)["services"]
    host, port = device.options["url"].split(":")
    assert host in services and services[host]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert port == "8001"  # tritonserver's default --grpc-port; the command does not change it


def _with_batch_dim(tensors) -> tuple[TensorSpec, ...]:
    """A Triton config's tensors as heddle declares them: batch dim -1 in front, KServe datatype names."""
    return tuple(TensorSpec(t.name, model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")
                            .replace("STRING", "BYTES"), (-1, *t.dims)) for t in tensors)


def test_triton_repository_serves_what_the_config_declares(cache_dir: Path) -> None:
    """The repository's configs parse as Triton ModelConfigs with the config's IO, over readable copies of its ONNX."""
    config = parse_toml_config(HEDDLE_TOML, cache_dir)
    repo = TRITON_MODELS["write_repository"](cache_dir)
    hosted = [m for m in config.models.values() if m.backend == "triton"]
    assert sorted(m.artifact for m in hosted) == sorted(TRITON_MODELS["MODELS"])
    for model in hosted:
        served = text_format.Parse((repo / model.artifact / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert served.name == model.artifact and served.backend == "onnxruntime"
        assert served.dynamic_batching.priority_levels == 4
        assert _with_batch_dim(served.input) == model.inputs, model.name
        assert _with_batch_dim(served.output) == model.outputs, model.name
        local = Path(config.models[model.artifact].artifact)  # the same model run by heddle's ORT
        served_file = repo / model.artifact / "1" / "model.onnx"
        assert served_file.read_bytes() == local.read_bytes()
        assert served_file.stat().st_mode & 0o004, "Triton runs as another user: the file must be world-readable"


def test_multibox_example_config_loads(cache_dir: Path) -> None:
    """The configuration in docs/MULTIBOX.md is a valid heddle config with several Triton devices."""
    [block] = re.findall(r"```toml\n(.*?)```", MULTIBOX.read_text(), flags=re.S)
    config = parse_toml_config(MULTIBOX, cache_dir, text=block)
    assert len([d for d in config.devices if d.backend == "triton"]) >= 2
    assert any(len(m.devices) >= 2 for m in config.models.values() if m.backend == "triton")


# ---- the compose config against a real Triton server ---------------------------------------------
def test_compose_config_runs_its_triton_pipelines_like_the_local_ones(cache_dir: Path, triton_server) -> None:
    """With its Triton device pointed at a real Triton, the *_triton pipelines give the local pipelines' outputs."""
    text = HEDDLE_TOML.read_text()
    assert text.count('url = "triton:8001"') == 1
    config = parse_toml_config(HEDDLE_TOML, cache_dir, text.replace("triton:8001", triton_server.grpc_url))
    rng = np.random.default_rng(0)
    cases = {
        "classify": {"image": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)},
        "multihead": {"image": rng.standard_normal((3, 3, 64, 64)).astype(np.float32)},
    }
    with running_server(config) as running, running.client() as client:
        for pipeline, inputs in cases.items():
            local = client.infer(pipeline, inputs, timeout_s=30)
            remote = client.infer(f"{pipeline}_triton", inputs, timeout_s=30)
            assert {s.device for s in remote.stages} >= {"triton0"}
            assert "triton0" not in {s.device for s in local.stages}
            assert sorted(remote.outputs) == sorted(local.outputs)
            for name, want in local.outputs.items():
                np.testing.assert_allclose(remote.outputs[name], want, rtol=1e-4, atol=1e-5, err_msg=name)
