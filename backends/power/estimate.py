"""The estimated power sensor: a per-device power model driven by busy fraction and DVFS level."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heddle.backends.power.sensors import ESTIMATED, PowerSample, Unavailable

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "DEFAULT_POWER_MODELS",
    "EstimateSensor",
    "PowerModel",
    "detect_estimate",
    "estimate_power_w",
    "parse_power_model",
    "power_model_of",
]


@dataclass(frozen=True, slots=True)
class PowerModel:
    """A device's power: `idle_w` when it runs nothing, `active_w[level]` when busy the whole
    time at DVFS level `level` (0 = fastest, the same levels the actuator offers)."""

    idle_w: float
    active_w: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.idle_w >= 0:
            raise ValueError(f"idle_w must be >= 0, got {self.idle_w}")
        if not self.active_w:
            raise ValueError("active_w needs one value per DVFS level, got none")
        low = [w for w in self.active_w if not w >= self.idle_w]
        if low:
            raise ValueError(f"active_w {list(self.active_w)} has values below idle_w {self.idle_w}: {low}")

    @property
    def levels(self) -> int:
        return len(self.active_w)


# ASSUMED orders of magnitude, used only when a device has no `power` table in config (the
# reasons from detection say so): a few x86/ARM cores, a discrete GPU, an edge DLA/NPU.
DEFAULT_POWER_MODELS: Mapping[str, PowerModel] = {
    "cpu": PowerModel(1.0, (6.0, 4.0, 2.5)),
    "gpu": PowerModel(8.0, (60.0, 38.0, 20.0)),
    "dla": PowerModel(0.5, (4.0, 2.0)),
    "npu": PowerModel(0.5, (5.0, 3.0)),
}


def parse_power_model(raw: Any, where: str) -> PowerModel:
    """`{ idle_w = 2.0, active_w = [9.0, 6.0, 4.0] }` -> PowerModel; ValueError names `where`."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: power must be a table {{ idle_w, active_w }}, got {raw!r}")
    unknown = sorted(set(raw) - {"idle_w", "active_w"})
    if unknown:
        raise ValueError(f"{where}: unknown power keys {unknown}; expected idle_w and active_w")
    try:
        active = raw["active_w"]
        if isinstance(active, (int, float)):
            active = [active]
        return PowerModel(float(raw["idle_w"]), tuple(float(w) for w in active))
    except KeyError as exc:
        raise ValueError(f"{where}: power needs {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad power model: {exc}") from None


def power_model_of(device: DeviceSpec) -> tuple[PowerModel | None, str]:
    """The device's configured model, else the assumed default for its kind; the string says
    which (empty when configured). ValueError for a malformed `power` table. Under a CPU-bandwidth
    actuator (`dvfs.kind = "cgroup"`) each level's busy power follows from its share of CPU time."""
    model, note = _configured_or_default(device)
    if model is not None and _bandwidth_controlled(device):
        from heddle.backends.power.dvfs_cgroup import bandwidth_power_model

        model = bandwidth_power_model(device, model, configured=not note)
        if note:
            note += f"; per bandwidth level {[round(w, 3) for w in model.active_w]} W"
    return model, note


def _bandwidth_controlled(device: DeviceSpec) -> bool:
    raw = device.options.get("dvfs")
    return isinstance(raw, Mapping) and raw.get("kind") == "cgroup"


def _configured_or_default(device: DeviceSpec) -> tuple[PowerModel | None, str]:
    if "power" in device.options:
        return parse_power_model(device.options["power"], f"device {device.id}"), ""
    default = DEFAULT_POWER_MODELS.get(device.kind)
    if default is None:
        return None, f"no power model configured and no default for kind {device.kind!r}"
    return default, (
        f"no power model configured; using the assumed default for kind {device.kind!r}: "
        f"idle {default.idle_w:g} W, active {list(default.active_w)} W per level"
    )


def estimate_power_w(model: PowerModel, busy_fraction: float, level: int) -> float:
    """idle + busy x (active[level] - idle) (for a cgroup device active[level] already scales with
    its bandwidth share: power_model_of). Busy is clamped to [0, 1]; a level past the last
    one counts as the last (the same rule as DeviceSpeed.clock)."""
    if level < 0:
        raise ValueError(f"DVFS level must be >= 0, got {level}")
    busy = min(1.0, max(0.0, busy_fraction))
    active = model.active_w[min(level, model.levels - 1)]
    return model.idle_w + busy * (active - model.idle_w)


def _level_zero(device: str) -> int:
    return 0


class EstimateSensor:
    """Power of every modelled device from its busy fraction and DVFS level, energy integrated.

    The busy fraction describes a window ending now, so the power computed at a read is
    charged for the whole interval since the previous read (energy += power x dt).
    """

    name = "estimate"

    def __init__(
        self,
        models: Mapping[str, PowerModel],
        busy_fraction: Callable[[str], float],
        level_of: Callable[[str], int] = _level_zero,
    ) -> None:
        self.models = dict(models)
        self.devices = tuple(self.models)
        self._busy_fraction = busy_fraction
        self._level_of = level_of
        self._energy_j = {device: 0.0 for device in self.models}
        self._last_s: float | None = None

    def read(self, now_s: float) -> list[PowerSample]:
        dt_s = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        samples = []
        for device, model in self.models.items():
            power_w = estimate_power_w(model, self._busy_fraction(device), self._level_of(device))
            self._energy_j[device] += power_w * dt_s
            samples.append(PowerSample(device, power_w, self._energy_j[device], ESTIMATED, "estimate", now_s))
        return samples

    def close(self) -> None:
        return None


def _idle(device: str) -> float:
    return 0.0


def detect_estimate(
    devices: Sequence[DeviceSpec],
    busy_fraction: Callable[[str], float] | None,
    level_of: Callable[[str], int] | None,
) -> tuple[list[EstimateSensor], list[Unavailable]]:
    """One EstimateSensor over every device that has (or defaults to) a power model."""
    models: dict[str, PowerModel] = {}
    notes: list[Unavailable] = []
    for device in devices:
        model, note = power_model_of(device)
        if note:
            notes.append(Unavailable(f"power model of {device.id}", note))
        if model is not None:
            models[device.id] = model
    if not models:
        return [], notes
    if busy_fraction is None:
        notes.append(Unavailable("estimate", "no busy_fraction source given: estimates report idle power"))
        busy_fraction = _idle
    return [EstimateSensor(models, busy_fraction, level_of or _level_zero)], notes
