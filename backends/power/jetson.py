"""Jetson INA3221 power rails in sysfs: discovery of both driver layouts, rail-to-device mapping, the sensor.

Layouts (both read; see docs/POWER.md for sources):
- hwmon, upstream `ina3221` driver (JetPack 5+, Orin): `sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/`
  with `in<N>_label` (rail name), `in<N>_input` (bus voltage, mV), `curr<N>_input` (current, mA).
  Channel 7 is "sum of shunt voltages" (no current file) and Orin labels unused channels "NC".
- iio, NVIDIA's `ina3221x` driver (JetPack 4 and older: Nano, TX2, Xavier):
  `sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device*/` with `rail_name_<N>`, `in_power<N>_input` (mW),
  `in_voltage<N>_input` (mV), `in_current<N>_input` (mA).
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

__all__ = ["BOARD_RAILS", "JetsonRailSensor", "Rail", "detect_ina3221", "discover_rails", "rail_device_kinds"]

HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
# Rails that feed the whole module: every other rail is part of them (jtop and tegrastats
# report them as the total).
BOARD_RAILS = frozenset({"VDD_IN", "POM_5V_IN"})
# Rail-name tokens -> the device kinds the rail feeds. "CV" is the vision cluster (DLA, PVA).
_TOKEN_KINDS = {"GPU": ("gpu",), "CPU": ("cpu",), "CV": ("dla",)}


@dataclass(frozen=True, slots=True)
class Rail:
    """One INA3221 channel: its label and the files its power is computed from."""

    name: str
    layout: str  # "hwmon" | "iio"
    power_mw_path: Path | None  # iio in_power<N>_input
    voltage_mv_path: Path | None
    current_ma_path: Path | None

    def power_w(self) -> float:
        """The rail's power now; SysfsReadError when a file cannot be read."""
        if self.power_mw_path is not None:
            return read_sysfs_int(self.power_mw_path) / 1000.0
        assert self.voltage_mv_path is not None and self.current_ma_path is not None
        return read_sysfs_int(self.voltage_mv_path) * read_sysfs_int(self.current_ma_path) / 1e6


def _channel(name: str, prefix: str, suffix: str) -> int | None:
    match = re.fullmatch(rf"{prefix}(\d+){suffix}", name)
    return int(match.group(1)) if match else None


def _hwmon_rails(folder: Path) -> list[Rail]:
    rails = []
    for label_path in sorted(folder.glob("in*_label")):
        n = _channel(label_path.name, "in", "_label")
        current = folder / f"curr{n}_input"
        if n is None or not current.exists():  # channel 7: "sum of shunt voltages", no current
            continue
        label = read_sysfs_text(label_path)
        if label and label.upper() != "NC":  # NC: channel not connected on this board
            rails.append(Rail(label, "hwmon", None, folder / f"in{n}_input", current))
    return rails


def _iio_rails(folder: Path) -> list[Rail]:
    rails = []
    for label_path in sorted(folder.glob("rail_name_*")):
        n = _channel(label_path.name, "rail_name_", "")
        label = read_sysfs_text(label_path) if n is not None else ""
        if not label or label.upper() == "NC":
            continue
        power = folder / f"in_power{n}_input"
        rails.append(Rail(label, "iio", power if power.exists() else None,
                          folder / f"in_voltage{n}_input", folder / f"in_current{n}_input"))
    return rails


def discover_rails(sysfs_root: Path) -> tuple[list[Rail], list[Unavailable]]:
    """Every labelled INA3221 channel under both layouts; unreadable labels are reported."""
    rails: list[Rail] = []
    skipped: list[Unavailable] = []
    for pattern, reader in ((HWMON_GLOB, _hwmon_rails), (IIO_GLOB, _iio_rails)):
        for folder in sorted(sysfs_root.glob(pattern)):
            try:
                rails += reader(folder)
            except SysfsReadError as exc:
                skipped.append(Unavailable(f"ina3221 {folder}", str(exc)))
    return rails, skipped


def rail_device_kinds(rail_name: str) -> frozenset[str]:
    """The device kinds a rail feeds, from its name: VDD_GPU_SOC -> gpu, VDD_CPU_GPU_CV -> cpu, gpu, dla."""
    tokens = re.split(r"[_\s]+", rail_name.upper())
    return frozenset(kind for token in tokens for kind in _TOKEN_KINDS.get(token, ()))


def _rail_domain(rail: Rail, wanting: Sequence[DeviceSpec], others: Sequence[DeviceSpec]) -> str | None:
    """The domain a rail reports for; None when every device it feeds is accounted elsewhere
    (another sensor, the estimate, or "none"), so that the box total counts nothing twice.
    Devices naming the rail in `sensor.rail` own it; otherwise its name is matched to kinds."""
    named = [d.id for d in wanting if sensor_options(d).get("rail") == rail.name]
    if named:
        return domain_of(named)
    if rail.name.upper() in BOARD_RAILS:
        return BOARD
    kinds = rail_device_kinds(rail.name)
    fed = [d.id for d in wanting if d.kind in kinds and "rail" not in sensor_options(d)]
    if fed:
        return domain_of(fed)
    if any(d.kind in kinds for d in others):
        return None
    return f"rail:{rail.name}"


class JetsonRailSensor:
    """Reads each rail's power (no energy counter in INA3221: energy_j is None)."""

    name = "ina3221"

    def __init__(self, rails: Sequence[tuple[Rail, str]]) -> None:
        self.rails = list(rails)
        self.devices = tuple(sorted({d for _, domain in self.rails for d in domain_devices(domain)}))
        self.last_error = ""

    def read(self, now_s: float) -> list[PowerSample]:
        samples = []
        for rail, domain in self.rails:
            try:
                power_w = rail.power_w()
            except SysfsReadError as exc:
                self.last_error = str(exc)
                continue
            samples.append(PowerSample(domain, power_w, None, MEASURED, f"ina3221:{rail.name}", now_s))
        return samples

    def close(self) -> None:
        return None


def detect_ina3221(
    devices: Sequence[DeviceSpec], sysfs_root: Path, others: Sequence[DeviceSpec] = (),
) -> tuple[list[JetsonRailSensor], list[Unavailable]]:
    """A sensor over the readable rails for `devices`; `others` are accounted elsewhere, so
    rails feeding only them are left out. Rails feeding no device at all (VDD_SOC, the board
    input) are read anyway: they count toward the box."""
    rails, skipped = discover_rails(sysfs_root)
    if not rails and not skipped:
        return [], [Unavailable("ina3221", f"no INA3221 rails under {sysfs_root / 'sys/bus/i2c/drivers'}/ina3221*")]
    usable = []
    for rail in rails:
        try:
            rail.power_w()
        except SysfsReadError as exc:
            skipped.append(Unavailable(f"ina3221:{rail.name}", str(exc)))
            continue
        domain = _rail_domain(rail, devices, others)
        if domain is not None:
            usable.append((rail, domain))
    for device in devices:
        wanted = sensor_options(device).get("rail")
        if wanted is not None and wanted not in {rail.name for rail, _ in usable}:
            skipped.append(Unavailable(f"ina3221 for {device.id}", f"rail {wanted!r} not found or not readable"))
    return ([JetsonRailSensor(usable)] if usable else []), skipped
