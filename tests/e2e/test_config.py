"""Configuration: bad configs are refused at start with a message naming the problem; the embedded
default config parses and detects devices."""

from __future__ import annotations

import os
import subprocess
import sys

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from pathlib import Path

import pytest
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    REPO_ROOT,
    TESTS_DIR,
    default_config,
    heddle_cache_dir,
    py_model_toml,
)

from heddle.server.config.default import default_config_text, detect_device_tables
from heddle.server.config.load import Config, ConfigError, load_config, parse_config

DEVICE = '[[devices]]\nid = "py0"\nbackend = "python"\n\n'
MODELS = py_model_toml("a", "stage_fns:tail") + py_model_toml("b", "stage_fns:tail")


def pipeline(s0_model="a", s0_source="input:x", s1_model="b", s1_source="s0.y") -> str:
    return f"""
[[pipelines]]
name = "p"
inputs = [{{ name = "x", datatype = "FP32", shape = [-1] }}]
outputs = {{ y = "s1.y" }}
stages = [
  {{ name = "s0", model = "{s0_model}", inputs = {{ x = "{s0_source}" }} }},
  {{ name = "s1", model = "{s1_model}", inputs = {{ x = "{s1_source}" }} }},
]
"""


GOOD = DEVICE + MODELS + pipeline()

BAD_CONFIGS = {
    "cycle": (DEVICE + MODELS + pipeline(s0_source="s1.y"), ["stages ['s0', 's1'] form a cycle"]),
    "dangling wire": (DEVICE + MODELS + pipeline(s1_source="ghost.y"),
                      ["stage 's1'", "dangling wire to unknown stage 'ghost'"]),
    "unknown model": (DEVICE + MODELS + pipeline(s1_model="nomodel"), ["stage 's1'", "unknown model 'nomodel'"]),
    "unknown device": (DEVICE + py_model_toml("a", "stage_fns:tail", devices=["gpu7"]) + pipeline(s1_model="a"),
                       ["model 'a'", "unknown device 'gpu7'"]),
    "bad datatype": (DEVICE + py_model_toml("a", "stage_fns:tail").replace('"FP32"', '"FLOAT32"', 1)
                     + py_model_toml("b", "stage_fns:tail") + pipeline(),
                     ["model 'a'", "unknown datatype 'FLOAT32'"]),
    "unknown policy": ('[server]\npolicy = "lottery"\n' + GOOD, ["unknown policy 'lottery'", "fcfs"]),
    "unknown server key": ('[server]\ngrpc_prot = 1\n' + GOOD,
                           ["[server]: unknown key 'grpc_prot' (did you mean 'grpc_port'?)"]),
    "default priority out of range": ('[server]\ndefault_priority = 9\n' + GOOD, ["default_priority 9"]),
    "device used twice": (DEVICE + GOOD, ["device id 'py0' is used twice"]),
    "no devices": (MODELS + pipeline(), ["no [[devices]]"]),
    "unknown backend": (GOOD.replace('backend = "python"', 'backend = "tensorflow"', 1),
                        ["unknown backend 'tensorflow'"]),
    "no device for a backend": (GOOD + '[[models]]\nname = "cnn"\npath = "builtin:cnn"\n',
                                ["model 'cnn'", "no configured device has backend 'onnxruntime'"]),
    "python function without module": (GOOD.replace('function = "stage_fns:tail"', 'function = "tail"', 1),
                                       ["model 'a'", "module:function"]),
    "non-numeric shape": (GOOD.replace("shape = [-1]", 'shape = ["batch"]', 1), ["model 'a'", "shape"]),
    "datatype mismatch on a wire": (
        DEVICE + MODELS + py_model_toml("i", "stage_fns:tail").replace('"FP32"', '"INT64"') + pipeline(s1_model="i"),
        ["stage 's1'", "datatype FP32", "INT64"]),
    "not valid TOML": ("[[devices]\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_refused_naming_the_problem(case: str):
    """Each broken config raises ConfigError whose message names the source and the faulty item."""
    text, fragments = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    message = str(info.value)
    assert message.startswith("bad.toml"), message
    for fragment in fragments:
        assert fragment in message, message


def test_good_config_parses():
    """The base of the bad configs is itself valid, so each bad case fails for its own reason."""
    config = parse_config(GOOD, "good.toml", TESTS_DIR)
    assert [s.name for s in config.pipelines["p"].stages] == ["s0", "s1"]


def test_onnx_files_are_resolved_and_checked(tmp_path: Path, heddle_cache_dir: Path):
    """A missing ONNX file and a file that is not ONNX are both ConfigErrors naming the model."""
    device = '[[devices]]\nid = "cpu0"\nbackend = "onnxruntime"\n\n'
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    for path, fragment in [("missing.onnx", "does not exist"), ("junk.onnx", "cannot read ONNX model"),
                           ("builtin:resnet9000", "unknown builtin model 'resnet9000'")]:
        text = f'{device}[[models]]\nname = "m"\npath = "{path}"\n'
        with pytest.raises(ConfigError, match=fragment) as info:
            parse_config(text, "x.toml", tmp_path, {"cache_dir": str(heddle_cache_dir)})
        assert "model 'm'" in str(info.value)


def run_serve(config: Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    return subprocess.run(
        [sys.executable, "-m", "heddle.server.cli", "serve", "--config", str(config),
         "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, env=env)


@pytest.mark.slow
def test_serve_with_a_bad_config_exits_nonzero_with_the_message(tmp_path: Path):
    """`heddle serve --config bad.toml` exits 2 and prints the config error on stderr."""
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIGS["cycle"][0])
    done = run_serve(bad)
    assert done.returncode == 2, done.stderr
    assert f"{bad}: pipeline 'p': stages ['s0', 's1'] form a cycle" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_serve_with_a_misspelled_key_exits_2_naming_it(tmp_path: Path):
    """`heddle serve --config` with a misspelled device key exits 2 at start with the key and what was meant."""
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('backend = "python"', 'backend = "python"\nslot = 2', 1))
    done = run_serve(bad)
    assert done.returncode == 2, done.stderr
    assert f"{bad}: devices[0] ('py0'): unknown key 'slot' (did you mean 'slots'?)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_serve_with_an_unimportable_stage_exits_nonzero_with_the_message(tmp_path: Path):
    """A python stage whose module cannot be imported stops `heddle serve` at start with a message, not a traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('function = "stage_fns:tail"', 'function = "no_such_module:tail"', 1))
    done = run_serve(bad)
    assert done.returncode == 1, done.stderr
    assert "cannot import module no_such_module" in done.stderr
    assert "Traceback" not in done.stderr


def test_default_config_serves_pinned_cpu_devices_and_a_python_pool(default_config: Config,
                                                                    heddle_cache_dir: Path):
    """The embedded default has ORT CPU devices on disjoint cores, py0, the demo pipelines, cached models."""
    ort_devices = [d for d in default_config.devices if d.backend == "onnxruntime"]
    assert ort_devices and all(d.options["providers"] == ["CPUExecutionProvider"] for d in ort_devices)
    cores = [c for d in ort_devices for c in d.options["cpu_affinity"]]
    assert len(cores) == len(set(cores)) and all(d.options["cpu_affinity"] for d in ort_devices)
    assert [(d.id, d.backend) for d in default_config.devices if d.backend == "python"] == [("py0", "python")]
    assert sorted(default_config.pipelines) == ["chat", "chat_text", "classify", "detect_classify", "multihead",
                                                "text_classify"]
    for model in default_config.models.values():
        if model.backend == "onnxruntime":
            assert Path(model.artifact).parent == heddle_cache_dir / "models"


def test_default_config_text_uses_heddle_cache_dir(monkeypatch: pytest.MonkeyPatch):
    """HEDDLE_CACHE_DIR becomes the default config's cache_dir."""
    monkeypatch.setenv("HEDDLE_CACHE_DIR", "/somewhere/cache")
    assert tomllib.loads(default_config_text())["server"]["cache_dir"] == "/somewhere/cache"


def test_default_config_loads_with_a_quote_in_heddle_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               heddle_cache_dir: Path):
    """A HEDDLE_CACHE_DIR with a quote and a backslash is a value, not TOML text: the default loads there."""
    odd = tmp_path / 'my "models" \\ cache'
    odd.symlink_to(heddle_cache_dir)  # the models built once for the session, under the odd name
    monkeypatch.setenv("HEDDLE_CACHE_DIR", str(odd))
    config = load_config(None)
    assert config.server.cache_dir == str(odd)
    assert Path(config.models["cnn"].artifact).parent == odd / "models"
    assert tomllib.loads(default_config_text())["server"]["cache_dir"] == str(odd)


def test_four_cores_and_one_gpu_make_four_pinned_cpu_devices_a_gpu_and_py0():
    """detect_device_tables(cpu_count=4, gpu_count=1): cpu0..cpu3 one core each, gpu0 on CUDA, then py0."""
    devices = tomllib.loads(detect_device_tables(cpu_count=4, gpu_count=1))["devices"]
    assert [d["id"] for d in devices] == ["cpu0", "cpu1", "cpu2", "cpu3", "gpu0", "py0"]
    for i, d in enumerate(devices[:4]):
        assert (d["backend"], d["cpu_affinity"], d["intra_op_threads"]) == ("onnxruntime", [i], 1)
    gpu = devices[4]
    assert gpu["kind"] == "gpu" and gpu["providers"][0] == "CUDAExecutionProvider"
    assert gpu["provider_options"][0] == {"device_id": 0}
    assert (devices[5]["backend"], devices[5]["slots"]) == ("python", 2)


def test_eight_cores_are_split_into_four_devices_of_two():
    """With 8 cores and no GPU each of the 4 CPU devices gets 2 cores and 2 intra-op threads."""
    devices = tomllib.loads(detect_device_tables(cpu_count=8, gpu_count=0))["devices"]
    assert [d.get("cpu_affinity") for d in devices] == [[0, 1], [2, 3], [4, 5], [6, 7], None]
    assert [d.get("intra_op_threads") for d in devices[:4]] == [2, 2, 2, 2]


@pytest.mark.parametrize("server, env, token", [
    ('admin_token = ""', "from-env", "from-env"),         # an empty value does not switch the env token off
    ("", "from-env", "from-env"),
    ('admin_token = "from-file"', "from-env", "from-file"),
    ('admin_token = ""', "", ""),
])
def test_admin_token_from_file_else_environment(monkeypatch: pytest.MonkeyPatch, server: str, env: str, token: str):
    """A non-empty admin_token in the file wins; an empty or absent one leaves HEDDLE_ADMIN_TOKEN in force."""
    monkeypatch.setenv("HEDDLE_ADMIN_TOKEN", env)
    config = parse_config(f"[server]\n{server}\n" + GOOD, "<test>", TESTS_DIR)
    assert config.server.admin_token == token


def test_insecure_admin_must_be_a_boolean():
    """insecure_admin = "yes" is refused rather than read as true."""
    with pytest.raises(ConfigError, match="insecure_admin must be true or false"):
        parse_config('[server]\ninsecure_admin = "yes"\n' + GOOD, "<test>", TESTS_DIR)


def test_tls_files_resolve_beside_the_config(tmp_path: Path):
    """[server.tls] paths are relative to the config file's folder, not the working directory."""
    (tmp_path / "tls").mkdir()
    for name in ("s.pem", "s.key"):
        (tmp_path / "tls" / name).write_text("-----BEGIN X-----\n")
    config = parse_config('[server.tls]\ncert = "tls/s.pem"\nkey = "tls/s.key"\n' + GOOD, "<test>", tmp_path)
    assert config.server.tls_cert == str((tmp_path / "tls" / "s.pem").resolve())
    with pytest.raises(ConfigError, match=r"cert file .*nope\.pem' does not exist"):
        parse_config('[server.tls]\ncert = "nope.pem"\nkey = "tls/s.key"\n' + GOOD, "<test>", tmp_path)
