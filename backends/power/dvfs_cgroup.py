"""The CPU-bandwidth actuator: a device's threads in a cgroup of their own, its levels shares of CPU time.

Opt-in per device, `dvfs = { kind = "cgroup" }`. Where cpufreq cannot be written (VMs,
containers) a delegated cgroup often can, and CFS bandwidth really slows the device: at 25%
its threads run a quarter of each period. The clock does not change, so a throttled device
does the same work for the same energy, spread over longer; the power estimate says so (see
`bandwidth_power_model`). The device's worker threads join the group as they start
(backends/base.py `make_pool`'s initializer); ONNX Runtime's intra-op threads are created by
the session, which the runtime creates on a worker thread (server/runtime/recovery.py loads
on the device's pool), so they are born in the group too.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import math
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from heddle.backends.power.cgroup import CgroupError, CpuGroup, Hierarchy, find_hierarchy, remove_stale
from heddle.backends.power.dvfs import ActuatorError, LevelActuator, NoneActuator, dvfs_options

if TYPE_CHECKING:
    from heddle.backends.power.estimate import PowerModel
    from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "CgroupActuator",
    "CgroupRegistry",
    "DEFAULT_PERCENTS",
    "DEFAULT_PERIOD_US",
    "bandwidth_percents",
    "bandwidth_power_model",
    "cgroup_actuator",
    "cgroup_joiner",
    "full_cpus",
    "registry_for",
    "with_bandwidth_clocks",
]

DEFAULT_PERCENTS = (100, 75, 50, 25)
LOWEST_PERCENT = 25  # the slowest level of an evenly spread ladder (`levels = n` without `values`)
# 10 ms, not the kernel's 100 ms default: a stage of a few ms then waits at most a few ms for the
# next period instead of tens, so a throttled device is slower rather than stalling in bursts.
DEFAULT_PERIOD_US = 10_000


def is_cgroup(device: DeviceSpec) -> bool:
    raw = device.options.get("dvfs")
    return isinstance(raw, Mapping) and raw.get("kind") == "cgroup"


def bandwidth_percents(device: DeviceSpec) -> list[int]:
    """Each level's share of the device's CPU time in percent, fastest first: `dvfs.values`, else
    `dvfs.levels` spread evenly from 100 to 25, else 100, 75, 50, 25. ValueError names the device."""
    options = dvfs_options(device)
    values = options.get("values")
    if values:
        bad = [v for v in values if not (isinstance(v, int) and 1 <= v <= 100)]
        if bad:
            raise ValueError(f"device {device.id}: dvfs.values for kind cgroup are percents 1..100, got {bad}")
        return sorted(set(values), reverse=True)
    count = options.get("levels")
    if count is None:
        return list(DEFAULT_PERCENTS)
    if int(count) == 1:
        return [100]
    step = (100 - LOWEST_PERCENT) / (int(count) - 1)
    return [round(100 - i * step) for i in range(int(count))]


def period_us(device: DeviceSpec) -> int:
    value = dvfs_options(device).get("period_us", DEFAULT_PERIOD_US)
    if not (isinstance(value, int) and 1000 <= value <= 1_000_000):
        raise ValueError(f"device {device.id}: dvfs.period_us must be 1000..1000000 (1 ms..1 s), got {value!r}")
    return value


def check_quotas(device: DeviceSpec) -> None:
    """ValueError naming the levels whose quota per period would be under the kernel's 1 ms
    minimum: the group's quota is raised to 1 ms, so such a level would run faster than it says
    (at a 2 ms period a 15% level ran at 50%), and the scheduler's and the power model's figures
    for it would be wrong. The message says the shortest period that keeps every level."""
    from heddle.backends.power.cgroup import MIN_QUOTA_US

    period, cpus = period_us(device), full_cpus(device)
    short = [p for p in bandwidth_percents(device) if p / 100 * cpus * period < MIN_QUOTA_US]
    if short:
        need = math.ceil(MIN_QUOTA_US / (min(short) / 100 * cpus))
        runs_at = round(100 * MIN_QUOTA_US / (cpus * period))
        raise ValueError(
            f"device {device.id}: dvfs levels {short}% of a {period} us CFS period on {cpus:g} CPU(s) are quotas "
            f"under the kernel's {MIN_QUOTA_US} us minimum, which would raise them ({min(short)}% would run at "
            f"{runs_at}%); set dvfs.period_us to at least {need}")


def full_cpus(device: DeviceSpec) -> float:
    """The CPUs the device's threads can use at once: its cores (cpu_affinity, else all this
    process may use), at most one per thread (slots x intra_op_threads). 100% is this many."""
    cores = device.options.get("cpu_affinity") or os.sched_getaffinity(0)
    threads = device.slots * int(device.options.get("intra_op_threads", 1) or 1)
    return float(max(1, min(len(cores), threads)))


def bandwidth_power_model(device: DeviceSpec, base: PowerModel, configured: bool) -> PowerModel:
    """Busy power per bandwidth level: idle + share x (active at full bandwidth - idle). A throttled
    group runs at full clock for its share of each period and idles the rest, so the busy
    fraction (wall time) grows as the share shrinks and the energy of a stage stays the same."""
    from heddle.backends.power.estimate import PowerModel

    if configured and len(base.active_w) > 1:
        raise ValueError(f'device {device.id}: with dvfs.kind = "cgroup", power.active_w is one value (busy '
                         f"watts at full bandwidth); each level's follows from its share, got {list(base.active_w)}")
    full_w = base.active_w[0]
    shares = [p / 100 for p in bandwidth_percents(device)]
    return PowerModel(base.idle_w, tuple(base.idle_w + s * (full_w - base.idle_w) for s in shares))


def with_bandwidth_clocks(device: DeviceSpec) -> DeviceSpec:
    """A cgroup device whose `speed.level_clock` is not declared runs each level at its share's
    speed: the scheduler's estimates per level and the controller's "does lowering slow the top
    class" follow from it. Malformed dvfs tables are left for the config check to report."""
    if not is_cgroup(device) or "level_clock" in (device.options.get("speed") or {}):
        return device
    try:
        clocks = [p / 100 for p in bandwidth_percents(device)]
    except ValueError:
        return device
    speed = {**(device.options.get("speed") or {}), "level_clock": clocks}
    return dataclasses.replace(device, options={**device.options, "speed": speed})


def _start_at_level_0(group: CpuGroup, device: DeviceSpec) -> None:
    """A new group runs at the device's fastest level from its first thread on: its ladder may start
    below 100% (an emulated slow device, `values = [15]`), and no controller step ever sets level 0.
    A malformed ladder is the config check's to report; the group then stays uncapped."""
    try:
        top = bandwidth_percents(device)[0]
    except ValueError:
        return
    if top < 100:
        group.set_fraction(top / 100)


class CgroupRegistry:
    """This process's device groups under one root: a device's group is made by whichever comes
    first, its first worker thread or actuator detection; the first also removes stale groups."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._hierarchy: Hierarchy | None = None
        self._groups: dict[str, CpuGroup] = {}
        self._failed: dict[str, CgroupError] = {}
        self.removed_stale: list[str] = []

    def group(self, device: DeviceSpec) -> CpuGroup | None:
        """The device's group, made on first use; None when it cannot be (`reason` says why)."""
        with self._lock:
            if device.id in self._groups:
                return self._groups[device.id]
            if device.id in self._failed:
                return None
            try:
                if self._hierarchy is None:
                    hierarchy = find_hierarchy(self.root)
                    self.removed_stale = remove_stale(hierarchy)
                    self._hierarchy = hierarchy
                group = CpuGroup(self._hierarchy, device.id, full_cpus(device), period_us(device))
                group.create()
                _start_at_level_0(group, device)
            except CgroupError as exc:
                self._failed[device.id] = exc
                return None
            self._groups[device.id] = group
            return group

    def error(self, device_id: str) -> CgroupError | None:
        return self._failed.get(device_id)

    def join(self, device: DeviceSpec) -> None:
        """Put the calling thread in the device's group (a worker pool's initializer). A thread that
        cannot join turns the device's bandwidth control off: a cap on part of its threads lies."""
        group = self.group(device)
        if group is None:
            return
        try:
            group.add_thread(threading.get_native_id())
        except CgroupError as exc:
            self.release(device.id)
            with self._lock:
                self._failed[device.id] = exc

    def release(self, device_id: str) -> None:
        """The group goes, its threads back to the parent (shutting down: a failure is left behind,
        and the next start removes it as stale)."""
        with self._lock:
            group = self._groups.pop(device_id, None)
        if group is not None:
            with contextlib.suppress(CgroupError):
                group.remove()

    def release_all(self) -> None:
        for device_id in list(self._groups):
            self.release(device_id)


_REGISTRIES: dict[Path, CgroupRegistry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry_for(root: str | Path = "/") -> CgroupRegistry:
    """The process's registry for a filesystem root ("/" in production, a SysfsTree in tests)."""
    path = Path(root)
    with _REGISTRIES_LOCK:
        if path not in _REGISTRIES:
            _REGISTRIES[path] = CgroupRegistry(path)
            # Best effort if nothing closed it: the threads go back before the process ends.
            atexit.register(_REGISTRIES[path].release_all)
        return _REGISTRIES[path]


def cgroup_joiner(device: DeviceSpec) -> Callable[[], None] | None:
    """What a worker thread of `device` runs first: join its group; None unless it opted in."""
    if not is_cgroup(device):
        return None
    return functools.partial(registry_for("/").join, device)


class CgroupActuator(LevelActuator):
    """CFS bandwidth of one device's group; levels in percent of its full share, fastest first."""

    KIND = "cgroup"
    unit = "%"

    def __init__(self, device: DeviceSpec, registry: CgroupRegistry, group: CpuGroup) -> None:
        super().__init__(device.id, f"cgroup:{group.path.name}", bandwidth_percents(device))
        self.spec = device
        self.registry = registry

    def _apply(self, index: int) -> None:
        group = self.registry.group(self.spec)
        if group is None:
            error = self.registry.error(self.spec.id)
            raise ActuatorError(str(error), permission=bool(error and error.permission), permanent=True)
        try:
            group.set_fraction(int(self._values[index]) / 100)
        except CgroupError as exc:
            raise ActuatorError(str(exc), permission=exc.permission) from None

    def _restore(self) -> None:
        group = self.registry.group(self.spec)
        if group is not None:
            try:
                group.set_fraction(1.0)
            except CgroupError as exc:
                raise ActuatorError(str(exc), permission=exc.permission) from None

    def close(self) -> None:
        super().close()
        self.registry.release(self.spec.id)


def cgroup_actuator(device: DeviceSpec, root: Path) -> LevelActuator:
    """The device's bandwidth actuator, or a NoneActuator saying why its group cannot be made."""
    registry = registry_for(root)
    group = registry.group(device)
    if group is None:
        return NoneActuator(device.id, f"cgroup: {registry.error(device.id)}; CPU bandwidth control is off "
                                       f"for {device.id}, serving continues")
    return CgroupActuator(device, registry, group)
