"""The power-sensor seam: PowerSample, the PowerSensor protocol, sysfs reads, and detection of what to use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from heddle.scheduler.power_settings import PowerSource

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "BOARD",
    "ESTIMATED",
    "MEASURED",
    "PowerSample",
    "PowerSensor",
    "SysfsReadError",
    "Unavailable",
    "box_power_w",
    "detect_sensors",
    "domain_devices",
    "domain_of",
    "read_sysfs_int",
    "read_sysfs_text",
    "sensor_options",
]

MEASURED, ESTIMATED = PowerSource.MEASURED, PowerSource.ESTIMATED
# The domain of a reading that covers the whole module (Jetson VDD_IN, RAPL psys), not one device.
BOARD = "board"
SENSOR_KINDS = ("auto", "nvml", "ina3221", "rapl", "estimate", "none")


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One power reading of one power domain at `t_s` (the caller's clock).

    device: the heddle device id the reading covers, or a "+"-joined group of ids when one
    physical rail feeds several devices (e.g. "cpu0+gpu0"), BOARD for a whole-module input
    rail, or "rail:NAME" for a rail that feeds no configured device.
    energy_j: joules consumed since the sensor's first read (monotonic, wraparound already
    undone), or None when the hardware has no energy counter.
    source: MEASURED (read from hardware) or ESTIMATED (from the power model).
    sensor: where it came from, e.g. "nvml:0", "ina3221:VDD_GPU_SOC", "rapl:package-0", "estimate".
    """

    device: str
    power_w: float
    energy_j: float | None
    source: PowerSource
    sensor: str
    t_s: float

    def __post_init__(self) -> None:
        if self.source not in (MEASURED, ESTIMATED):
            raise ValueError(f"power sample source must be {MEASURED.value!r} or {ESTIMATED.value!r}, "
                             f"got {self.source!r}")
        # A sensor passing the plain string gets the enum member, so every sample's source is one.
        object.__setattr__(self, "source", PowerSource(self.source))


class PowerSensor(Protocol):
    """Reads one or more power domains. `read` never raises for a failed reading: it leaves it out."""

    name: str
    devices: tuple[str, ...]  # heddle devices whose power this sensor reports (possibly shared)

    def read(self, now_s: float) -> list[PowerSample]:
        """The samples available now; `now_s` is the caller's clock, used for deltas and integration."""

    def close(self) -> None:
        """Release handles (NVML); safe to call twice."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Something detection looked for and could not use, and why (shown to operators verbatim)."""

    what: str
    reason: str


class SysfsReadError(OSError):
    """A sysfs attribute could not be read or parsed; the message names the file and the cause."""

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission

    def __str__(self) -> str:
        return str(self.args[0])


def read_sysfs_text(path: Path) -> str:
    """The stripped text of a sysfs attribute; SysfsReadError says why not (permission, missing, ...)."""
    try:
        return path.read_text().strip()
    except PermissionError:
        raise SysfsReadError(f"{path}: permission denied", permission=True) from None
    except OSError as exc:
        raise SysfsReadError(f"{path}: {exc.strerror or exc}") from None


def read_sysfs_int(path: Path) -> int:
    """A sysfs attribute holding one integer (some Jetson files append a unit: '32760 ma')."""
    text = read_sysfs_text(path)
    try:
        return int(text.split()[0])
    except (IndexError, ValueError):
        raise SysfsReadError(f"{path}: expected an integer, got {text[:40]!r}") from None


def domain_of(device_ids: Iterable[str]) -> str:
    """The domain name of a reading that covers these devices (sorted, so it is stable)."""
    return "+".join(sorted(set(device_ids)))


def domain_devices(domain: str) -> tuple[str, ...]:
    """The heddle devices a sample's domain covers (none for BOARD and "rail:..." domains)."""
    if domain == BOARD or domain.startswith("rail:"):
        return ()
    return tuple(domain.split("+"))


def box_power_w(samples: Sequence[PowerSample]) -> float:
    """The whole box's power: the board rail when one was read, else the sum of every domain.

    Domains from one detection never overlap, so the sum counts nothing twice; a board rail
    already includes every other rail, so it replaces the sum (as tegrastats and jtop do).
    """
    board = [s.power_w for s in samples if s.device == BOARD]
    return sum(board) if board else sum(s.power_w for s in samples)


def sensor_options(device: DeviceSpec) -> Mapping[str, Any]:
    """The device's `sensor = { kind, index, rail }` table; kind defaults to "auto"."""
    raw = device.options.get("sensor", {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"device {device.id}: sensor must be a table, got {raw!r}")
    kind = raw.get("kind", "auto")
    if kind not in SENSOR_KINDS:
        raise ValueError(f"device {device.id}: unknown sensor kind {kind!r}; expected one of {list(SENSOR_KINDS)}")
    return {**raw, "kind": kind}


def _wanting(devices: Sequence[DeviceSpec], kind: str, covered: set[str]) -> list[DeviceSpec]:
    return [d for d in devices if d.id not in covered and sensor_options(d)["kind"] in ("auto", kind)]


def detect_sensors(
    devices: Sequence[DeviceSpec],
    sysfs_root: str | Path = "/",
    nvml_module: Any = None,
    *,
    busy_fraction: Callable[[str], float] | None = None,
    level_of: Callable[[str], int] | None = None,
) -> tuple[list[PowerSensor], list[Unavailable]]:
    """Measured sensors where the hardware can be read (NVML, then INA3221 rails, then RAPL),
    the estimate for every device left uncovered, and the reason each thing was not used.

    busy_fraction(device) and level_of(device) feed the estimate (see power_estimate).
    A device's `sensor.kind` forces one source ("none" leaves it unmonitored).
    """
    # Imported here: each backend imports this module for PowerSample.
    from heddle.backends.power.estimate import detect_estimate
    from heddle.backends.power.jetson import detect_ina3221
    from heddle.backends.power.nvml import detect_nvml
    from heddle.backends.power.rapl import detect_rapl

    root = Path(sysfs_root)
    sensors: list[PowerSensor] = []
    skipped: list[Unavailable] = []
    covered: set[str] = set()
    steps = (
        ("nvml", lambda devs, others: detect_nvml(devs, nvml_module)),
        ("ina3221", lambda devs, others: detect_ina3221(devs, root, others)),
        ("rapl", lambda devs, others: detect_rapl(devs, root, others)),
    )
    for kind, detect in steps:
        wanting = _wanting(devices, kind, covered)
        found, why = detect(wanting, [d for d in devices if d not in wanting])
        sensors += found
        skipped += why
        for sensor in found:
            covered.update(sensor.devices)
    left = [d for d in devices if d.id not in covered and sensor_options(d)["kind"] != "none"]
    found, why = detect_estimate(left, busy_fraction, level_of)
    sensors += found
    skipped += why
    return sensors, skipped
