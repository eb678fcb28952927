"""The DVFS seam: abstract levels (0 = fastest), the actuator protocol and results, and detection per device."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from heddle.backends.power.sensors import Unavailable, domain_of

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "ActuatorError",
    "Applied",
    "Disabled",
    "DvfsActuator",
    "Failed",
    "LevelActuator",
    "NoPermission",
    "NoneActuator",
    "SetResult",
    "VirtualActuator",
    "detect_actuators",
    "dvfs_options",
    "level_count",
    "pick_levels",
]

DVFS_KINDS = ("auto", "nvml-clocks", "nvml-power-limit", "devfreq", "cpufreq", "cgroup", "virtual", "none")
DEFAULT_LEVEL_COUNT = 4


@dataclass(frozen=True, slots=True)
class Applied:
    """The knob now holds `value` (in the actuator's unit) for `level`."""

    level: int
    value: int | str


@dataclass(frozen=True, slots=True)
class NoPermission:
    """The OS or driver refused (NVML_ERROR_NO_PERMISSION, EACCES): the actuator is now "none"."""

    level: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The write failed; `level` is still the one in effect. Unsupported knobs also turn the actuator off."""

    level: int
    reason: str


@dataclass(frozen=True, slots=True)
class Disabled:
    """Nothing was done: the actuator is "none" (never had a knob, or lost it); `reason` says why."""

    level: int
    reason: str


SetResult = Applied | NoPermission | Failed | Disabled


class DvfsActuator(Protocol):
    """One device's clock/power knob behind abstract levels: 0 is the fastest, higher is slower."""

    device: str  # the heddle device, or "+"-joined devices sharing one knob
    name: str  # the knob, e.g. "cpufreq:policy0", "devfreq:17000000.ga10b", "nvml:0"
    unit: str  # of levels(): "kHz" (cpufreq), "Hz" (devfreq), "MHz" (NVML clocks), "mW" (power limit), "%" (cgroup)

    @property
    def kind(self) -> str:
        """"cpufreq", "devfreq", "nvml-clocks", "nvml-power-limit", "cgroup", "virtual", or "none"."""

    @property
    def reason(self) -> str:
        """Why this actuator is (or became) "none"; empty while it works."""

    def levels(self) -> list[int | str]:
        """The knob value of each level, fastest first."""

    def level(self) -> int:
        """The level in effect (what the last successful set_level applied)."""

    def set_level(self, index: int) -> SetResult:
        """Apply a level; never raises for a refusal by the OS or driver (ValueError if out of range)."""

    def close(self) -> None:
        """Give the knob back as it was found, if this actuator changed it."""


class ActuatorError(Exception):
    """A knob write failed. permission: refused by the OS/driver; permanent: it will never work here."""

    def __init__(self, message: str, *, permission: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.permission = permission
        self.permanent = permanent


class LevelActuator:
    """Shared bookkeeping: subclasses implement `_apply(index)` and `_restore()` (raising ActuatorError)."""

    KIND = "none"
    unit = ""

    def __init__(self, device: str, name: str, values: Sequence[int | str], current: int = 0) -> None:
        if not values:
            raise ValueError(f"{name}: an actuator needs at least one level")
        self.device = device
        self.name = name
        self._values = list(values)
        self._level = current
        self._reason = ""
        self._changed = False

    @property
    def kind(self) -> str:
        return "none" if self._reason else self.KIND

    @property
    def reason(self) -> str:
        return self._reason

    def levels(self) -> list[int | str]:
        return list(self._values)

    def level(self) -> int:
        return self._level

    def set_level(self, index: int) -> SetResult:
        if not 0 <= index < len(self._values):
            raise ValueError(f"{self.name}: level {index} out of range 0..{len(self._values) - 1}")
        if self._reason:
            return Disabled(self._level, self._reason)
        try:
            self._apply(index)
        except ActuatorError as exc:
            if exc.permission or exc.permanent:
                self._reason = f"{self.name}: {exc}; DVFS is off for {self.device}, serving continues"
                return (NoPermission if exc.permission else Failed)(self._level, self._reason)
            return Failed(self._level, f"{self.name}: {exc}")
        self._level = index
        self._changed = True
        return Applied(index, self._values[index])

    def close(self) -> None:
        if self._changed and not self._reason:
            with contextlib.suppress(ActuatorError):  # shutting down: the knob stays where it is
                self._restore()
            self._changed = False

    def _apply(self, index: int) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError


class NoneActuator(LevelActuator):
    """No knob: one level, and every set_level answers Disabled with the reason."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(device, "none", ["default"])
        self._reason = reason or "no DVFS knob"


class VirtualActuator(LevelActuator):
    """Records the level and touches no hardware: for demos and the simulator, and only when a
    device asks for `dvfs.kind = "virtual"`. An estimate fed its level reports modelled power
    for a clock the hardware never ran at, so its readings prove nothing about real power."""

    KIND = "virtual"
    unit = "level"

    def __init__(self, device: str, count: int) -> None:
        super().__init__(device, "virtual", list(range(count)))

    def _apply(self, index: int) -> None:
        return None

    def _restore(self) -> None:
        return None


def pick_levels(values: Sequence[int], count: int) -> list[int]:
    """`count` values spread evenly from the highest to the lowest, both included, fastest first."""
    ordered = sorted(set(values), reverse=True)
    if count < 1:
        raise ValueError(f"level count must be >= 1, got {count}")
    if count >= len(ordered):
        return ordered
    if count == 1:
        return ordered[:1]
    step = (len(ordered) - 1) / (count - 1)
    return [ordered[int(i * step + 0.5)] for i in range(count)]  # half up, not banker's


def dvfs_options(device: DeviceSpec) -> Mapping[str, Any]:
    """The device's `dvfs = { kind, levels, values, node }` table; kind defaults to "auto"."""
    raw = device.options.get("dvfs", {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"device {device.id}: dvfs must be a table, got {raw!r}")
    kind = raw.get("kind", "auto")
    if kind not in DVFS_KINDS:
        raise ValueError(f"device {device.id}: unknown dvfs kind {kind!r}; expected one of {list(DVFS_KINDS)}")
    return {**raw, "kind": kind}


def level_count(device: DeviceSpec) -> int:
    """How many levels to offer: `dvfs.levels`, else one per entry of the power model's active_w."""
    from heddle.backends.power.estimate import power_model_of

    explicit = dvfs_options(device).get("levels")
    if explicit is not None:
        return int(explicit)
    model, _ = power_model_of(device)
    return model.levels if model is not None else DEFAULT_LEVEL_COUNT


def _share(found: dict[str, LevelActuator]) -> tuple[dict[str, LevelActuator], list[Unavailable]]:
    """Devices whose knobs are the same files/GPU get one actuator object between them."""
    by_knob: dict[tuple[str, str], list[str]] = {}
    for device, actuator in found.items():
        by_knob.setdefault((actuator.KIND, actuator.name), []).append(device)
    notes = []
    for (kind, name), devices in by_knob.items():
        if len(devices) > 1 and kind not in ("none", "virtual"):
            shared = found[devices[0]]
            shared.device = domain_of(devices)
            for device in devices[1:]:
                found[device].close()
                found[device] = shared
            notes.append(Unavailable(f"separate DVFS for {', '.join(devices)}",
                                     f"they share {name}: one level for all of them"))
    return found, notes


def _sysfs_actuator(device: DeviceSpec, root: Path, nvml_reason: str) -> LevelActuator:
    from heddle.backends.power.dvfs_sysfs import cpufreq_actuator, devfreq_actuator

    kind = dvfs_options(device)["kind"]
    if kind == "none":
        return NoneActuator(device.id, 'dvfs.kind is "none" in config')
    if kind == "virtual":
        return VirtualActuator(device.id, level_count(device))
    if kind == "cgroup":  # opt-in only: it moves the device's threads, so auto never picks it
        from heddle.backends.power.dvfs_cgroup import cgroup_actuator

        return cgroup_actuator(device, root)
    if kind.startswith("nvml"):
        return NoneActuator(device.id, nvml_reason)
    if kind == "devfreq" or (kind == "auto" and device.kind == "gpu"):
        actuator = devfreq_actuator(device, root, level_count(device))
        if actuator.reason and nvml_reason:  # auto on a GPU: say why neither NVML nor devfreq
            return NoneActuator(device.id, f"{nvml_reason}; {actuator.reason}")
        return actuator
    if kind == "cpufreq" or (kind == "auto" and device.kind == "cpu"):
        return cpufreq_actuator(device, root, level_count(device))
    return NoneActuator(device.id, f"no DVFS knob known for kind {device.kind!r} (set dvfs.kind)")


def detect_actuators(
    devices: Sequence[DeviceSpec], sysfs_root: str | Path = "/", nvml_module: Any = None,
) -> tuple[dict[str, LevelActuator], list[Unavailable]]:
    """An actuator for every device: NVML for GPUs where it works, else Jetson devfreq; cpufreq
    for CPUs; NoneActuator (with the reason, also listed) where no knob can be driven."""
    from heddle.backends.power.dvfs_nvml import detect_nvml_actuators

    found, nvml_reasons = detect_nvml_actuators(devices, nvml_module)
    for device in devices:
        if device.id not in found:
            found[device.id] = _sysfs_actuator(device, Path(sysfs_root), nvml_reasons.get(device.id, ""))
    skipped = [Unavailable(f"dvfs for {device}", actuator.reason)
               for device, actuator in found.items() if actuator.reason]
    found, notes = _share(found)
    return found, skipped + notes
