"""Linux powercap RAPL energy counters (`sys/class/powercap/intel-rapl:N`): zones, mapping, the sensor.

Each top-level zone has `name` (package-N, psys, ...), `energy_uj` (a counter that wraps at
`max_energy_range_uj`) and sub-zones `intel-rapl:N:M` (core, uncore, dram) already counted in
their package, so only top-level zones are read. AMD Zen packages appear under the same names.
Since Linux 5.10 `energy_uj` is readable by root only (CVE-2020-8694, "PLATYPUS").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from heddle.backends.power.sensors import (
    BOARD,
    MEASURED,
    PowerSample,
    SysfsReadError,
    Unavailable,
    domain_devices,
    domain_of,
    read_sysfs_int,
    read_sysfs_text,
    sensor_options,
)

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = ["RaplSensor", "RaplZone", "detect_rapl", "discover_zones", "energy_delta_uj"]

POWERCAP = "sys/class/powercap"
_TOP_LEVEL = re.compile(r"intel-rapl:\d+")
_PERMISSION_HINT = ("energy_uj is root-only since Linux 5.10 (CVE-2020-8694): run as root or grant read "
                    "access to the file (e.g. a udev rule)")


@dataclass(slots=True)
class RaplZone:
    """One top-level zone and the counter state the sensor keeps for it."""

    path: Path
    name: str
    max_range_uj: int
    domain: str = ""
    last_uj: int | None = None
    last_s: float = 0.0
    energy_j: float = 0.0

    def read_uj(self) -> int:
        return read_sysfs_int(self.path / "energy_uj")


def energy_delta_uj(before_uj: int, after_uj: int, max_range_uj: int) -> int:
    """Energy between two counter reads; a smaller second read means the counter wrapped once
    (at 100 ms reads a package would need megawatts to wrap twice)."""
    delta = after_uj - before_uj
    return delta + max_range_uj if delta < 0 else delta


def discover_zones(sysfs_root: Path) -> tuple[list[RaplZone], list[Unavailable]]:
    """Top-level zones whose counter can be read now; the others with the reason."""
    zones, skipped = [], []
    for path in sorted((sysfs_root / POWERCAP).glob("intel-rapl:*")):
        if not _TOP_LEVEL.fullmatch(path.name):
            continue
        try:
            zone = RaplZone(path, read_sysfs_text(path / "name"), read_sysfs_int(path / "max_energy_range_uj"))
            zone.read_uj()
        except SysfsReadError as exc:
            hint = f"; {_PERMISSION_HINT}" if exc.permission else ""
            skipped.append(Unavailable(f"rapl {path.name}", f"{exc}{hint}"))
            continue
        zones.append(zone)
    return zones, skipped


def _package_of_cores(sysfs_root: Path, cores: Sequence[int]) -> int | None:
    """The one physical package all these cores sit on, or None (several, or topology unreadable)."""
    try:
        packages = {read_sysfs_int(sysfs_root / f"sys/devices/system/cpu/cpu{c}/topology/physical_package_id")
                    for c in cores}
    except SysfsReadError:
        return None
    return packages.pop() if len(packages) == 1 else None


def _map_devices(zones: list[RaplZone], devices: Sequence[DeviceSpec], sysfs_root: Path,
                 cpus_elsewhere: bool) -> list[Unavailable]:
    """Give each zone its domain: a package its CPU devices, psys the board. A package no
    device here owns, while CPU devices are accounted elsewhere, gets "" (not read)."""
    packages = {z.name: z for z in zones if z.name.startswith("package-")}
    owners: dict[str, list[str]] = {name: [] for name in packages}
    skipped = []
    for device in devices:
        wanted = sensor_options(device).get("zone")
        cores = device.options.get("cpu_affinity")
        if wanted is None and len(packages) == 1:
            wanted = next(iter(packages))
        elif wanted is None and cores:
            package = _package_of_cores(sysfs_root, [int(c) for c in cores])
            wanted = None if package is None else f"package-{package}"
        if wanted in owners:
            owners[wanted].append(device.id)
        else:
            skipped.append(Unavailable(f"rapl for {device.id}", f"no readable RAPL package zone for it "
                                       f"(zone {wanted!r}; packages {sorted(packages)}; cpu_affinity {cores})"))
    for zone in zones:
        if zone.name in owners and owners[zone.name]:
            zone.domain = domain_of(owners[zone.name])
        elif zone.name in owners:
            zone.domain = "" if cpus_elsewhere else f"rail:{zone.name}"
        else:
            zone.domain = BOARD if zone.name == "psys" else f"rail:{zone.name}"
    return skipped


class RaplSensor:
    """Power from energy deltas between reads, so the first read only primes the counters
    and returns no samples."""

    name = "rapl"

    def __init__(self, zones: Sequence[RaplZone]) -> None:
        self.zones = list(zones)
        self.devices = tuple(sorted({d for z in self.zones for d in domain_devices(z.domain)}))
        self.last_error = ""

    def read(self, now_s: float) -> list[PowerSample]:
        samples = []
        for zone in self.zones:
            try:
                counter_uj = zone.read_uj()
            except SysfsReadError as exc:
                self.last_error = str(exc)
                continue
            previous_uj, previous_s = zone.last_uj, zone.last_s
            zone.last_uj, zone.last_s = counter_uj, now_s
            if previous_uj is None:
                continue
            delta_j = energy_delta_uj(previous_uj, counter_uj, zone.max_range_uj) / 1e6
            zone.energy_j += delta_j
            if now_s > previous_s:
                power_w = delta_j / (now_s - previous_s)
                samples.append(PowerSample(zone.domain, power_w, zone.energy_j, MEASURED, f"rapl:{zone.name}", now_s))
        return samples

    def close(self) -> None:
        return None


def detect_rapl(
    devices: Sequence[DeviceSpec], sysfs_root: Path, others: Sequence[DeviceSpec] = (),
) -> tuple[list[RaplSensor], list[Unavailable]]:
    """A RaplSensor over the readable top-level zones, mapped to the CPU devices. `others` are
    accounted elsewhere: packages feeding only them are left out, so nothing counts twice."""
    cpus = [d for d in devices if d.kind == "cpu" or sensor_options(d)["kind"] == "rapl"]
    zones, skipped = discover_zones(sysfs_root)
    if not zones and not skipped:
        return [], [Unavailable("rapl", f"no {sysfs_root / POWERCAP}/intel-rapl:* zones "
                                        "(no RAPL here, or the intel_rapl driver is not loaded)")]
    if not zones:
        return [], skipped
    skipped += _map_devices(zones, cpus, sysfs_root, any(d.kind == "cpu" for d in others))
    zones = [z for z in zones if z.domain]
    return ([RaplSensor(zones)] if zones else []), skipped
