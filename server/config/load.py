"""TOML configuration: server settings, devices, models and pipelines, checked at load."""

from __future__ import annotations

import os
import sys

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heddle.scheduler import (
    DeviceSpec,
    ModelSpec,
    Pipeline,
    PipelineError,
    PipelineSpec,
    StageSpec,
    TensorSpec,
    validate_pipeline,
)
from heddle.scheduler.admission_settings import AdmissionSettings
from heddle.scheduler.power import PowerSettings
from heddle.server.config.memory_estimate import memory_budgets
from heddle.server.config.resolve import Resolving, resolve_model
from heddle.server.config.schema import ConfigError, Document, validate_document
from heddle.server.config.tables import ServerSettings
from heddle.server.config.versions import expand_pipeline, model_key, version_sets
from heddle.server.observe.tracing import TracingSettings

__all__ = ["Config", "ConfigError", "ServerSettings", "load_config", "parse_config", "parse_document"]


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    devices: tuple[DeviceSpec, ...]
    models: Mapping[str, ModelSpec]
    pipelines: Mapping[str, Pipeline]
    source: str = "<embedded default>"
    power: PowerSettings = field(default_factory=PowerSettings)  # the [power] table
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)  # the [admission] table
    tracing: TracingSettings = field(default_factory=TracingSettings)  # the [tracing] table
    # Pipelines whose stages split among model versions: each variant and its share of requests
    # (server/config/versions.py); config.pipelines holds the variant with the largest share.
    variants: Mapping[str, tuple[tuple[Pipeline, float], ...]] = field(default_factory=dict)


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Load a TOML file, or the embedded default (with device detection) when path is None."""
    if path is None:
        from heddle.server.config.default import default_config_document

        return parse_document(default_config_document(), "<embedded default>", Path.cwd(), overrides)
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
    return parse_document(doc, source, base_dir, overrides)


def parse_document(doc: Mapping[str, Any], source: str, base_dir: Path,
                   overrides: Mapping[str, Any] | None = None) -> Config:
    """A config from its document (what TOML parses to, or what config_builder builds): checked
    against the schema, cross-checked (devices, backends, DAG wiring), then resolved."""
    typed = validate_document(_with_overrides(doc, overrides or {}), source)
    _add_python_path(source, typed.python_path, base_dir)
    server = _server_settings(source, typed, base_dir)
    devices = tuple(_device(t) for t in typed.devices)
    _unique(source, "device", [d.id for d in devices])
    _check_bandwidth(source, devices)
    if not devices:
        raise ConfigError(f"{source}: no [[devices]] configured")
    cache_dir = Path(os.path.expanduser(server.cache_dir))
    try:
        sets = version_sets([(t.name, t.version, t.weight) for t in typed.models])
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    models: dict[str, ModelSpec] = {}
    for table in typed.models:
        key = model_key(table.name, table.version)
        where = f"{source}: model {key!r}"
        if key in models:
            raise ConfigError(f"{source}: model name {table.name!r} is used twice (give each a version)")
        candidates = _model_devices(where, table, devices)
        spec = resolve_model(table, Resolving(where, base_dir, cache_dir, candidates))
        models[key] = dataclasses.replace(spec, name=key)
    pipelines: dict[str, Pipeline] = {}
    variants: dict[str, tuple[tuple[Pipeline, float], ...]] = {}
    for table in typed.pipelines:
        try:
            expanded = [(validate_pipeline(spec, models), share)
                        for spec, share in expand_pipeline(_pipeline_spec(table), sets)]
        except (PipelineError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if table.name in pipelines:
            raise ConfigError(f"{source}: pipeline name {table.name!r} is used twice")
        # The variant most requests get stands for the pipeline (ListPipelines, limits, KServe).
        pipelines[table.name] = max(expanded, key=lambda ps: ps[1])[0]
        if len(expanded) > 1:
            variants[table.name] = tuple(expanded)
    return Config(server, devices, models, pipelines, source, variants=variants, power=_power(source, typed, devices),
                  admission=AdmissionSettings(**typed.admission.model_dump()),
                  tracing=TracingSettings(**typed.tracing.model_dump()))


def _add_python_path(source: str, folders: list[str], base_dir: Path) -> None:
    """python_path's folders, relative to the config file, go first on sys.path (worker processes
    of isolated stages start with the same sys.path), so stage modules import without PYTHONPATH."""
    for folder in reversed(folders):
        path = (base_dir / os.path.expanduser(folder)).resolve()
        if not path.is_dir():
            raise ConfigError(f"{source}: python_path {folder!r}: no folder {path}")
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def _with_overrides(doc: Mapping[str, Any], overrides: Mapping[str, Any]) -> Mapping[str, Any]:
    """The document with command-line values over its [server] keys (None: not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return doc
    server = doc.get("server", {})
    return {**doc, "server": {**server, **given} if isinstance(server, dict) else server}


def _admission(source: str, doc: Mapping[str, Any]) -> AdmissionSettings:
    try:
        return AdmissionSettings.from_table(doc.get("admission", {}) or {})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _power(source: str, typed: Document, devices: tuple[DeviceSpec, ...]) -> PowerSettings:
    """The [power] table, and every device's power/sensor/dvfs tables checked by the backends'
    own parsers (values: active_w not below idle_w, ...), so a mistake stops the start instead of
    a silent fallback to the estimate."""
    from heddle.backends.power.dvfs import dvfs_options, level_count
    from heddle.backends.power.estimate import power_model_of
    from heddle.backends.power.sensors import sensor_options

    try:
        for device in devices:
            power_model_of(device)
            sensor_options(device)
            dvfs_options(device)
            level_count(device)
        if typed.power is None:
            return PowerSettings()
        return PowerSettings.from_table(typed.power.model_dump(exclude_unset=True), [d.id for d in devices])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _server_settings(source: str, typed: Document, base_dir: Path) -> ServerSettings:
    raw = typed.server.model_dump(exclude={"tls"})
    # An empty admin_token means "not set here", never "no token": it must not switch off a token
    # the environment gives (a config template with admin_token = "" would open the Admin RPCs).
    if not raw["admin_token"]:
        raw["admin_token"] = os.environ.get("HEDDLE_ADMIN_TOKEN", "")
    if not raw["infer_token"]:  # the same rule for the inference token
        raw["infer_token"] = os.environ.get("HEDDLE_INFER_TOKEN", "")
    for key, path in typed.server.tls.model_dump().items():
        raw[f"tls_{key}"] = _tls_path(source, key, path, base_dir) if path else ""
    settings = ServerSettings(**raw)
    if settings.default_priority > settings.priority_levels:
        raise ConfigError(f"{source}: [server] default_priority {settings.default_priority} is outside "
                          f"1..{settings.priority_levels}")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError(f"{source}: [server.tls] needs both cert and key")
    try:
        memory_budgets(settings.max_inflight_bytes, settings.max_request_bytes,
                       settings.inflight_top_reserve_fraction)
    except ValueError as exc:
        raise ConfigError(f"{source}: [server] {exc}") from None
    return settings


def _tls_path(source: str, key: str, path: str, base_dir: Path) -> str:
    """A [server.tls] file, relative to the config file's folder (as model paths are), checked to exist."""
    resolved = (base_dir / os.path.expanduser(path)).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{source}: [server.tls] {key} file {str(resolved)!r} does not exist")
    return str(resolved)


def _device(table: Any) -> DeviceSpec:
    """A device as the scheduler and backends see it: the keys set in its table are its options."""
    from heddle.backends.power.dvfs_cgroup import with_bandwidth_clocks

    options = table.model_dump(exclude_unset=True, exclude={"id", "kind", "backend", "slots"})
    return with_bandwidth_clocks(DeviceSpec(table.id, table.kind, table.backend, table.slots, options))


def _check_bandwidth(source: str, devices: tuple[DeviceSpec, ...]) -> None:
    """A CPU-bandwidth ladder whose levels the kernel can keep (dvfs_cgroup.check_quotas)."""
    from heddle.backends.power.dvfs_cgroup import check_quotas, is_cgroup

    for device in devices:
        if is_cgroup(device):
            try:
                check_quotas(device)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None


def _model_devices(where: str, table: Any, devices: tuple[DeviceSpec, ...]) -> tuple[DeviceSpec, ...]:
    """The devices a model may run on, checked to exist and to be of its backend."""
    known = {d.id: d for d in devices}
    for dev in table.devices:
        if dev not in known:
            raise ConfigError(f"{where}: unknown device {dev!r}")
        if known[dev].backend != table.backend:
            # The scheduler moves a stage only among its model's devices, and a model has one
            # artifact for one backend: say so here rather than fail the start on a bad load.
            raise ConfigError(f"{where}: device {dev!r} has backend {known[dev].backend!r}, but the "
                              f"model's backend is {table.backend!r}; a model runs only on devices of its "
                              f"own backend")
    candidates = tuple(known[d] for d in table.devices) if table.devices else devices
    if not any(d.backend == table.backend for d in candidates):
        raise ConfigError(f"{where}: no configured device has backend {table.backend!r}")
    throttled = [d.id for d in candidates if d.backend == table.backend and
                 isinstance(d.options.get("dvfs"), dict) and d.options["dvfs"].get("kind") == "cgroup"]
    if getattr(table, "inline", False) is True and throttled:
        # The loop's thread is in no device's cgroup: the stage would escape the bandwidth cap.
        raise ConfigError(f'{where}: inline = true runs the stage on the event loop, outside the CPU-bandwidth '
                          f'cgroup of device(s) {throttled} (dvfs.kind = "cgroup"); drop inline or name '
                          f"other devices")
    return candidates


def _pipeline_spec(table: Any) -> PipelineSpec:
    inputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in table.inputs)
    stages = tuple(StageSpec(s.name, s.model, dict(s.inputs), s.map, s.map_batch, s.when, s.map_sort)
                   for s in table.stages)
    outputs = {name: o if isinstance(o, str) else o.from_ for name, o in table.outputs.items()}
    tables = {name: o for name, o in table.outputs.items() if not isinstance(o, str)}
    optional = tuple(name for name, o in tables.items() if o.optional)
    gathered = {name: (o.gather, o.pad) for name, o in tables.items() if o.gather is not None}
    return PipelineSpec(table.name, inputs, stages, outputs, table.description, optional, gathered)


def _unique(source: str, what: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{source}: {what} id {n!r} is used twice")
        seen.add(n)
