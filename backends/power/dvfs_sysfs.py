"""Frequency caps through sysfs: Linux cpufreq policies (scaling_max_freq) and devfreq nodes (Jetson GPU max_freq).

Both cap the clock and leave the governor free below the cap, the same files nvpmodel and
jetson_clocks write. cpufreq: `sys/devices/system/cpu/cpufreq/policy*/` (kHz), devfreq:
`sys/class/devfreq/<node>/` (Hz), e.g. Orin's GPU node 17000000.ga10b (JetPack 5) or
17000000.gpu (JetPack 6), Xavier 17000000.gv11b, TX2 17000000.gp10b, Nano 57000000.gpu.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from heddle.backends.power.dvfs import ActuatorError, LevelActuator, NoneActuator, dvfs_options, pick_levels
from heddle.backends.power.sensors import SysfsReadError, read_sysfs_int, read_sysfs_text

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = ["FreqKnob", "SysfsFreqActuator", "cpufreq_actuator", "devfreq_actuator", "write_sysfs"]

CPUFREQ = "sys/devices/system/cpu/cpufreq"
DEVFREQ = "sys/class/devfreq"
_GPU_NODE = re.compile(r".*\.(gpu|g[a-z]\d+[a-z])")


def write_sysfs(path: Path, value: int) -> None:
    """Write one integer; ActuatorError says whether it was a refusal (permission) or hopeless."""
    try:
        path.write_text(f"{value}\n")
    except PermissionError:
        raise ActuatorError(f"cannot write {path}: permission denied (needs root)", permission=True) from None
    except OSError as exc:
        permanent = exc.errno in (errno.ENOENT, errno.EROFS, errno.ENOTDIR)
        raise ActuatorError(f"cannot write {value} to {path}: {exc.strerror or exc}", permanent=permanent) from None


@dataclass(slots=True)
class FreqKnob:
    """One min/max pair of files, its values per level, and what it held when found."""

    min_path: Path
    max_path: Path
    values: list[int]
    original_min: int
    original_max: int

    def write_range(self, low: int, high: int) -> None:
        """Set [low, high] in an order the kernel accepts: min never above max in between."""
        try:
            current_min = read_sysfs_int(self.min_path)
        except SysfsReadError as exc:
            raise ActuatorError(str(exc), permission=exc.permission) from None
        if low < current_min:
            write_sysfs(self.min_path, low)
            write_sysfs(self.max_path, high)
        else:
            write_sysfs(self.max_path, high)
            write_sysfs(self.min_path, low)


class SysfsFreqActuator(LevelActuator):
    """Caps one or more knobs (e.g. the policies of a CPU cluster) to the same level's values."""

    def __init__(self, kind: str, unit: str, device: str, name: str, knobs: Sequence[FreqKnob]) -> None:
        first = knobs[0]
        current = min(range(len(first.values)), key=lambda i: abs(first.values[i] - first.original_max))
        super().__init__(device, name, first.values, current)
        self.KIND = kind
        self.unit = unit
        self.knobs = list(knobs)

    def _apply(self, index: int) -> None:
        for knob in self.knobs:
            # Lowering the cap below the floor would be refused, so the floor follows it down.
            target = knob.values[index]
            knob.write_range(min(knob.original_min, target), target)

    def _restore(self) -> None:
        for knob in self.knobs:
            knob.write_range(knob.original_min, knob.original_max)


def _knob(folder: Path, min_name: str, max_name: str, available: list[int], lowest: int, highest: int,
          count: int, chosen: Sequence[int] | None) -> FreqKnob:
    if chosen:
        values = sorted({int(v) for v in chosen}, reverse=True)
        bad = [v for v in values if available and v not in available]
        if bad:
            raise SysfsReadError(f"{folder}: dvfs.values {bad} are not among the available {sorted(available)}")
    elif available:
        values = pick_levels(available, count)
    else:  # no table (intel_pstate): any value in range is accepted
        values = pick_levels(sorted({round(highest - i * (highest - lowest) / max(count - 1, 1))
                                     for i in range(count)}), count)
    return FreqKnob(folder / min_name, folder / max_name, values,
                    read_sysfs_int(folder / min_name), read_sysfs_int(folder / max_name))


def _ints(path: Path) -> list[int]:
    """A space-separated list of integers; empty when the file does not exist."""
    if not path.exists():
        return []
    text = read_sysfs_text(path)
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        raise SysfsReadError(f"{path}: expected integers, got {text[:60]!r}") from None


def _policies_for(root: Path, device: DeviceSpec) -> list[Path]:
    """The cpufreq policies covering the device's pinned cores (all of them when it is not pinned)."""
    cores = {int(c) for c in device.options.get("cpu_affinity", ()) or ()}
    policies = sorted((root / CPUFREQ).glob("policy*"), key=lambda p: int(p.name[6:] or 0))
    if not cores:
        return policies
    return [p for p in policies if cores & set(_ints(p / "related_cpus"))]


def cpufreq_actuator(device: DeviceSpec, root: Path, count: int) -> LevelActuator:
    """scaling_max_freq of the device's policies, levels from scaling_available_frequencies or
    spread over cpuinfo_min_freq..cpuinfo_max_freq."""
    if not (root / CPUFREQ).is_dir():
        return NoneActuator(device.id, f"no {root / CPUFREQ}: this kernel or VM exposes no CPU frequency scaling")
    policies = _policies_for(root, device)
    if not policies:
        return NoneActuator(device.id, f"no cpufreq policy under {root / CPUFREQ} covers its cores")
    chosen = dvfs_options(device).get("values")
    try:
        knobs = [_knob(p, "scaling_min_freq", "scaling_max_freq", _ints(p / "scaling_available_frequencies"),
                       read_sysfs_int(p / "cpuinfo_min_freq"), read_sysfs_int(p / "cpuinfo_max_freq"), count, chosen)
                 for p in policies]
    except SysfsReadError as exc:
        return NoneActuator(device.id, f"cpufreq unreadable: {exc}")
    name = "cpufreq:" + ",".join(p.name for p in policies)
    return SysfsFreqActuator("cpufreq", "kHz", device.id, name, knobs)


def devfreq_actuator(device: DeviceSpec, root: Path, count: int) -> LevelActuator:
    """max_freq of the devfreq node named by `dvfs.node`, or of the one GPU node for a GPU device."""
    options = dvfs_options(device)
    node = options.get("node")
    if node is None:
        gpus = sorted(p for p in (root / DEVFREQ).glob("*") if _GPU_NODE.fullmatch(p.name))
        if len(gpus) != 1:
            found = [p.name for p in gpus] or "none"
            return NoneActuator(device.id, f"devfreq: need exactly one GPU node under {root / DEVFREQ} "
                                           f"(found {found}); set dvfs.node")
        folder = gpus[0]
    else:
        folder = root / DEVFREQ / str(node)
    try:
        available = _ints(folder / "available_frequencies")
        lowest = min(available) if available else read_sysfs_int(folder / "min_freq")
        highest = max(available) if available else read_sysfs_int(folder / "max_freq")
        knob = _knob(folder, "min_freq", "max_freq", available, lowest, highest, count, options.get("values"))
    except SysfsReadError as exc:
        return NoneActuator(device.id, f"devfreq unreadable: {exc}")
    return SysfsFreqActuator("devfreq", "Hz", device.id, f"devfreq:{folder.name}", [knob])
