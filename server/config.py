"""TOML configuration: server settings, devices, models and pipelines, checked at load."""

from __future__ import annotations

import os
try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from heddle.scheduler import (
    POLICIES, DeviceSpec, ModelSpec, Pipeline, PipelineError, PipelineSpec, StageSpec, TensorSpec,
    validate_pipeline,
)
from heddle.scheduler.admission_settings import AdmissionSettings
from heddle.scheduler.power import PowerSettings
from heddle.scheduler.specs import DATATYPES
from heddle.server.stage_timeouts import check_stage_limits

__all__ = ["Config", "ConfigError", "ServerSettings", "load_config", "parse_config"]

BACKENDS = ("onnxruntime", "python", "triton")
DEFAULT_CACHE_DIR = "~/.cache/heddle"


class ConfigError(ValueError):
    """The configuration cannot be served; the message names the file and the item."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8002
    max_message_bytes: int = 64 * 1024 * 1024
    grace_period_s: float = 10.0
    policy: str = "priority"
    # Priority levels 1..priority_levels, higher is more urgent; 0 in a request means default.
    priority_levels: int = 4
    default_priority: int = 2
    cache_dir: str = DEFAULT_CACHE_DIR
    admin_token: str = ""
    # Serve the Admin RPCs beyond loopback with no token and no mutual TLS (refused otherwise).
    insecure_admin: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    log_level: str = "info"
    # JSON-lines arrival trace for `heddle simulate --trace` (server/trace.py); "" = off.
    trace_file: str = ""
    # Request memory (server/limits.py): 0 = derived from the machine's memory (docs/CONFIG.md).
    max_inflight_bytes: int = 0
    max_request_bytes: int = 0
    inflight_top_reserve_fraction: float = 0.2


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    devices: tuple[DeviceSpec, ...]
    models: Mapping[str, ModelSpec]
    pipelines: Mapping[str, Pipeline]
    source: str = "<embedded default>"
    extra: Mapping[str, Any] = field(default_factory=dict)
    power: PowerSettings = field(default_factory=PowerSettings)  # the [power] table
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)  # the [admission] table


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Load a TOML file, or the embedded default (with device detection) when path is None."""
    if path is None:
        from heddle.server.default_config import default_config_text

        return parse_config(default_config_text(), "<embedded default>", Path.cwd(), overrides)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, str(path), path.parent, overrides)


def parse_config(text: str, source: str, base_dir: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Parse and check a whole configuration; ConfigError says what and where."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    server = _server_settings(source, doc.get("server", {}), overrides or {}, base_dir)
    devices = tuple(_device(source, i, d) for i, d in enumerate(doc.get("devices", [])))
    _unique(source, "device", [d.id for d in devices])
    if not devices:
        raise ConfigError(f"{source}: no [[devices]] configured")
    cache_dir = Path(os.path.expanduser(server.cache_dir))
    models = {}
    for i, raw in enumerate(doc.get("models", [])):
        spec = _model(source, i, raw, base_dir, cache_dir, devices)
        if spec.name in models:
            raise ConfigError(f"{source}: model name {spec.name!r} is used twice")
        models[spec.name] = spec
    pipelines = {}
    for i, raw in enumerate(doc.get("pipelines", [])):
        try:
            pipeline = validate_pipeline(_pipeline_spec(source, i, raw), models)
        except PipelineError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if pipeline.name in pipelines:
            raise ConfigError(f"{source}: pipeline name {pipeline.name!r} is used twice")
        pipelines[pipeline.name] = pipeline
    return Config(server, devices, models, pipelines, source, power=_power(source, doc, devices),
                  admission=_admission(source, doc))


def _admission(source: str, doc: Mapping[str, Any]) -> AdmissionSettings:
    try:
        return AdmissionSettings.from_table(doc.get("admission", {}) or {})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _power(source: str, doc: Mapping[str, Any], devices: tuple[DeviceSpec, ...]) -> PowerSettings:
    """The [power] table, and every device's power/sensor/dvfs tables checked by the backends'
    own parsers, so a typo stops the start instead of a silent fallback to the estimate."""
    from heddle.backends.dvfs import dvfs_options, level_count
    from heddle.backends.power_estimate import power_model_of
    from heddle.backends.power_sensors import sensor_options

    try:
        for device in devices:
            power_model_of(device)
            sensor_options(device)
            dvfs_options(device)
            level_count(device)
        return PowerSettings.from_table(doc.get("power", {}), [d.id for d in devices]) if "power" in doc \
            else PowerSettings()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _server_settings(source: str, raw: Mapping[str, Any], overrides: Mapping[str, Any],
                     base_dir: Path) -> ServerSettings:
    raw = dict(raw)
    tls = raw.pop("tls", {}) or {}
    for key in ("cert", "key", "client_ca"):
        if key in tls:
            raw[f"tls_{key}"] = tls[key]
    known = {f.name for f in fields(ServerSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown [server] keys {unknown}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    # An empty admin_token means "not set here", never "no token": it must not switch off a token
    # the environment gives (a config template with admin_token = "" would open the Admin RPCs).
    if not raw.get("admin_token"):
        raw["admin_token"] = os.environ.get("HEDDLE_ADMIN_TOKEN", "")
    if not isinstance(raw.get("insecure_admin", False), bool):
        raise ConfigError(f"{source}: [server] insecure_admin must be true or false")
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if raw.get(key):
            raw[key] = _tls_path(source, key, raw[key], base_dir)
    settings = ServerSettings(**raw)
    if settings.policy not in POLICIES:
        raise ConfigError(f"{source}: unknown policy {settings.policy!r}; known: {sorted(POLICIES)}")
    if not 1 <= settings.default_priority <= settings.priority_levels:
        raise ConfigError(f"{source}: default_priority {settings.default_priority} is outside "
                          f"1..{settings.priority_levels}")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError(f"{source}: [server.tls] needs both cert and key")
    from heddle.server.limits import memory_budgets

    try:
        memory_budgets(settings.max_inflight_bytes, settings.max_request_bytes,
                       settings.inflight_top_reserve_fraction)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: [server] {exc}") from None
    return settings


def _tls_path(source: str, key: str, path: str, base_dir: Path) -> str:
    """A [server.tls] file, relative to the config file's folder (as model paths are), checked to exist."""
    resolved = (base_dir / os.path.expanduser(str(path))).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{source}: [server.tls] {key.removeprefix('tls_')} file {str(resolved)!r} does not exist")
    return str(resolved)


def _device(source: str, index: int, raw: Mapping[str, Any]) -> DeviceSpec:
    raw = dict(raw)
    where = f"{source}: devices[{index}]"
    try:
        dev_id, kind, backend = raw.pop("id"), raw.pop("kind", "cpu"), raw.pop("backend")
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
    if backend not in BACKENDS:
        raise ConfigError(f"{where} ({dev_id!r}): unknown backend {backend!r}; known: {list(BACKENDS)}")
    slots = int(raw.pop("slots", 1))
    if slots < 1:
        raise ConfigError(f"{where} ({dev_id!r}): slots must be >= 1")
    return DeviceSpec(dev_id, kind, backend, slots, raw)


def _tensors(where: str, raw: Any) -> tuple[TensorSpec, ...]:
    out = []
    for t in raw or []:
        try:
            spec = TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: tensor {t!r} needs name, datatype and shape ({exc})") from None
        if spec.datatype not in DATATYPES:
            raise ConfigError(f"{where}: tensor {spec.name!r} has unknown datatype {spec.datatype!r}")
        out.append(spec)
    return tuple(out)


def _model(source, index, raw, base_dir: Path, cache_dir: Path, devices) -> ModelSpec:
    raw = dict(raw)
    where = f"{source}: models[{index}]"
    name = raw.pop("name", None)
    if not name:
        raise ConfigError(f"{where}: missing key 'name'")
    where = f"{source}: model {name!r}"
    backend = raw.pop("backend", "onnxruntime")
    allowed = tuple(raw.pop("devices", ()))
    known = {d.id: d for d in devices}
    for dev in allowed:
        if dev not in known:
            raise ConfigError(f"{where}: unknown device {dev!r}")
        if known[dev].backend != backend:
            # The scheduler moves a stage only among its model's devices, and a model has one
            # artifact for one backend: say so here rather than fail the start on a bad load.
            raise ConfigError(f"{where}: device {dev!r} has backend {known[dev].backend!r}, but the "
                              f"model's backend is {backend!r}; a model runs only on devices of its "
                              f"own backend")
    candidates = [known[d] for d in allowed] if allowed else list(devices)
    if not any(d.backend == backend for d in candidates):
        raise ConfigError(f"{where}: no configured device has backend {backend!r}")
    kind = raw.pop("kind", "python" if backend == "python" else "dnn")
    try:
        check_stage_limits(backend, kind, raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    from heddle.server.limits import check_model_limit_options

    if (problem := check_model_limit_options(raw)) is not None:
        raise ConfigError(f"{where}: {problem}")
    inputs, outputs = _tensors(where, raw.pop("inputs", None)), _tensors(where, raw.pop("outputs", None))
    if backend == "onnxruntime":
        artifact = _onnx_path(where, raw.pop("path", None), base_dir, cache_dir)
        from heddle.backends.base import BackendError
        from heddle.backends.onnxruntime import read_io_spec

        try:
            inputs, outputs = read_io_spec(artifact)
        except BackendError as exc:  # not ONNX, truncated: a config problem, said as one
            raise ConfigError(f"{where}: {exc}") from None
        if kind == "llm":
            inputs, outputs = _llm_io(where, ModelSpec(name, backend, str(artifact), inputs, outputs, kind,
                                                       allowed, raw))
    elif backend == "python":
        artifact = raw.pop("function", "")
        if ":" not in artifact:
            raise ConfigError(f"{where}: python models need function = 'module:function'")
        if not inputs or not outputs:
            raise ConfigError(f"{where}: python models must declare inputs and outputs")
    else:
        artifact = raw.pop("triton_model", name)
        if kind == "llm":  # a decoupled model that streams its tokens (server/llm_triton.py)
            inputs, outputs = _triton_llm_io(where, raw)
        elif not inputs or not outputs:
            served_in, served_out = _triton_io(where, artifact, str(raw.get("triton_version", "")), candidates)
            inputs, outputs = inputs or served_in, outputs or served_out
    return ModelSpec(name, backend, str(artifact), inputs, outputs, kind, allowed, raw)


def _llm_io(where: str, graph: ModelSpec) -> tuple:
    """An LLM stage's pipeline IO (prompt ids in, generated ids out), once its graph is checked to
    be a KV-cache decoder and its generation defaults to be valid."""
    from heddle.backends.base import BackendError
    from heddle.backends.llm import DecoderLayout, GenerationConfig, stage_io

    try:
        DecoderLayout.from_spec(graph)
        GenerationConfig.from_options(graph.options)
    except (BackendError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return stage_io()


def _triton_llm_io(where: str, options: Mapping[str, Any]) -> tuple:
    """An LLM stage's pipeline IO for a Triton-hosted LLM, once its generation defaults are valid;
    the model itself is checked (decoupled, INT64 input_ids and output_ids) when it loads."""
    from heddle.backends.base import BackendError
    from heddle.backends.llm import GenerationConfig, stage_io

    if int(options.get("max_batch", 1)) > 1:
        raise ConfigError(f"{where}: max_batch is for LLMs heddle runs itself; a Triton-hosted LLM is "
                          f"batched by its Triton server")
    try:
        GenerationConfig.from_options(options)
    except (BackendError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return stage_io()


def _triton_io(where: str, model: str, version: str, candidates) -> tuple:
    """Undeclared IO of a triton model: the ModelMetadata of the first of its servers that answers."""
    from heddle.backends.base import BackendError
    from heddle.backends.triton import read_triton_io_spec

    errors = []
    for dev in candidates:
        if dev.backend != "triton":
            continue
        try:
            return read_triton_io_spec(str(dev.options.get("url", "")), model, version, timeout_s=5.0)
        except BackendError as exc:
            errors.append(f"device {dev.id}: {exc}")
    raise ConfigError(f"{where}: declare inputs and outputs, or make one of its Triton servers reachable "
                      f"({'; '.join(errors)})")


def _onnx_path(where: str, path: str | None, base_dir: Path, cache_dir: Path) -> Path:
    if not path:
        raise ConfigError(f"{where}: onnxruntime models need path = 'file.onnx' or 'builtin:NAME'")
    if path.startswith("builtin:"):
        from heddle.backends.zoo.build import MODEL_NAMES, build_model

        builtin = path.removeprefix("builtin:")
        if builtin not in MODEL_NAMES:
            raise ConfigError(f"{where}: unknown builtin model {builtin!r}; known: {list(MODEL_NAMES)}")
        return build_model(builtin, cache_dir / "models")
    resolved = (base_dir / os.path.expanduser(path)).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{where}: model file {resolved} does not exist")
    return resolved


def _pipeline_spec(source: str, index: int, raw: Mapping[str, Any]) -> PipelineSpec:
    name = raw.get("name")
    if not name:
        raise ConfigError(f"{source}: pipelines[{index}]: missing key 'name'")
    where = f"{source}: pipeline {name!r}"
    stages = []
    for s in raw.get("stages", []):
        if "name" not in s or "model" not in s:
            raise ConfigError(f"{where}: every stage needs name and model")
        stages.append(StageSpec(s["name"], s["model"], dict(s.get("inputs", {}))))
    return PipelineSpec(name, _tensors(where, raw.get("inputs")), tuple(stages),
                        dict(raw.get("outputs", {})), raw.get("description", ""))


def _unique(source: str, what: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{source}: {what} id {n!r} is used twice")
        seen.add(n)
