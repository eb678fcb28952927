"""A simulated platform from a parsed TOML document: [[devices]] as in a serve config (the keys the
simulator uses: id, kind, slots, speed.level_clock, power, unsupported_ops, supported_ops; the
backend's own keys are accepted and ignored) and [[models]] with a latency per device kind.

Defaults for what is not given: one DVFS level (level_clock [1.0]); a kind's power per level from
its devices' `power.active_w` (relative to level 0), else clock^2 (the rule platforms.py uses);
a model's power from its kind's `power.active_w[0]`, else 0 W (energy then counts nothing);
no op types (runs wherever it has a latency); cv 0.05. Pure: the caller reads the file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from heddle.scheduler.sim.platforms import ModelFigures, Platform
from heddle.scheduler.specs import DeviceSpec

__all__ = ["DEFAULT_CV", "parse_platform"]

DEFAULT_CV = 0.05
_TOP = {"name", "description", "devices", "models", "level_power"}
_USED = {"id", "kind", "slots", "speed", "power", "unsupported_ops", "supported_ops"}
# A serve config's device keys that only matter to a real backend: a platform may be a config's devices.
_IGNORED = {"backend", "providers", "provider_options", "intra_op_threads", "cpu_affinity", "cpu_mem_arena",
            "url", "client_timeout_s", "sensor", "dvfs"}
_MODEL = {"name", "latency_ms", "power_w", "op_types", "cv"}


def _unknown(raw: Mapping[str, Any], known: Collection[str], where: str) -> None:
    extra = sorted(set(raw) - set(known))
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra}; known: {sorted(known)}")


def _floats(value: Any, where: str, *, positive: bool = True) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v == 0) for v in values):
        raise ValueError(f"{where}: expected a list of {'positive ' if positive else ''}numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _device(raw: Any, where: str) -> DeviceSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table")
    _unknown(raw, _USED | _IGNORED, where)
    device_id = raw.get("id")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError(f"{where}: id must be a non-empty string")
    slots = raw.get("slots", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"{where}: slots must be an integer >= 1, got {slots!r}")
    speed = dict(raw.get("speed") or {})
    clocks = _floats(speed.get("level_clock", [1.0]), f"{where}: speed.level_clock")
    if list(clocks) != sorted(clocks, reverse=True):
        raise ValueError(f"{where}: speed.level_clock must run from the fastest level down, got {list(clocks)}")
    options: dict[str, Any] = {"speed": {**speed, "level_clock": clocks}}
    for key in ("power", "unsupported_ops", "supported_ops"):
        if key in raw:
            options[key] = raw[key]
    if "power" in raw:
        power = raw["power"]
        if not isinstance(power, Mapping) or "active_w" not in power:
            raise ValueError(f"{where}: power must be a table {{ idle_w, active_w }}")
        active = _floats(power["active_w"], f"{where}: power.active_w")
        if len(active) < len(clocks):
            raise ValueError(f"{where}: power.active_w has {len(active)} values for {len(clocks)} levels")
    return DeviceSpec(device_id, str(raw.get("kind", "cpu")), "sim", slots, options)


def _kind_power(devices: list[DeviceSpec], levels: Mapping[str, Any], where: str) -> dict[str, tuple[float, ...]]:
    """Per kind: power per level relative to level 0; and which kinds have a device power table."""
    out: dict[str, tuple[float, ...]] = {}
    for device in devices:
        count = len(device.options["speed"]["level_clock"])
        if device.kind in levels:
            factors = _floats(levels[device.kind], f"{where}: level_power.{device.kind}")
        elif "power" in device.options:
            active = _floats(device.options["power"]["active_w"], where)
            factors = tuple(w / active[0] for w in active)
        else:
            factors = tuple(c * c for c in device.options["speed"]["level_clock"])
        if len(factors) < count:
            raise ValueError(f"{where}: kind {device.kind!r} has {len(factors)} power factors for device "
                             f"{device.id}'s {count} levels")
        out.setdefault(device.kind, factors)
    return out


def _model(raw: Any, kinds: Mapping[str, float], where: str) -> tuple[str, ModelFigures]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table")
    _unknown(raw, _MODEL, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string")
    latency = raw.get("latency_ms")
    if not isinstance(latency, Mapping) or not latency:
        raise ValueError(f"{where} ({name!r}): latency_ms must be a table of device kind = ms, e.g. {{ gpu = 1.1 }}")
    bad = sorted(set(latency) - set(kinds))
    if bad:
        raise ValueError(f"{where} ({name!r}): latency_ms names kinds {bad} no device has (kinds: {sorted(kinds)})")
    power = dict(raw.get("power_w") or {})
    figures = ModelFigures(
        op_types=frozenset(str(op) for op in raw.get("op_types", [])),
        latency_ms={k: _floats(v, f"{where} ({name!r}): latency_ms.{k}")[0] for k, v in latency.items()},
        power_w={k: _floats(power.get(k, kinds[k]), f"{where} ({name!r}): power_w.{k}", positive=False)[0]
                 for k in latency},
        cv=_floats(raw.get("cv", DEFAULT_CV), f"{where} ({name!r}): cv", positive=False)[0])
    return name, figures


def parse_platform(doc: Mapping[str, Any], where: str = "<platform>") -> Platform:
    """A Platform from a platform document; ValueError names the file, the table and the key."""
    _unknown(doc, _TOP, where)
    devices_raw, models_raw = doc.get("devices"), doc.get("models")
    if not isinstance(devices_raw, list) or not devices_raw:
        raise ValueError(f"{where}: a platform needs at least one [[devices]] table")
    if not isinstance(models_raw, list) or not models_raw:
        raise ValueError(f"{where}: a platform needs at least one [[models]] table")
    devices = [_device(raw, f"{where}: devices[{i}]") for i, raw in enumerate(devices_raw)]
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: device ids must be unique, got {ids}")
    level_power = _kind_power(devices, doc.get("level_power") or {}, where)
    # A model's default power on a kind: the kind's first device's busy watts at level 0.
    kind_w = {d.kind: 0.0 for d in devices}
    for d in reversed(devices):
        if "power" in d.options:
            kind_w[d.kind] = _floats(d.options["power"]["active_w"], where)[0]
    models = dict(_model(raw, kind_w, f"{where}: models[{i}]") for i, raw in enumerate(models_raw))
    if len(models) != len(models_raw):
        raise ValueError(f"{where}: model names must be unique")
    name = str(doc.get("name", "platform"))
    return Platform(name, str(doc.get("description", name)), tuple(devices), models, level_power)
