"""Test doubles for hardware that cannot exist on a CI box: FakeNvml at the pynvml seam, SysfsTree for sysfs."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

__all__ = ["FakeGpu", "FakeNvml", "SysfsTree", "UNPRIVILEGED_UID", "run_unprivileged", "shared_tempdir"]

# "nobody": permission checks are skipped for root, so permission tests run code as this user.
UNPRIVILEGED_UID = 65534


@dataclass
class FakeGpu:
    """What one fake GPU reports and holds. Set calls need `root`; error fields make a call fail."""

    name: str = "NVIDIA Fake GPU"
    power_mw: int = 150_000
    energy_mj: int | None = 5_000_000  # None: no energy counter (pre-Volta), NOT_SUPPORTED
    power_error: int | None = None  # an NVML_ERROR_* code nvmlDeviceGetPowerUsage raises
    memory_clocks_mhz: tuple[int, ...] = (2619, 810)
    graphics_clocks_mhz: tuple[int, ...] = tuple(range(1980, 194, -15))
    power_limit_mw: int = 300_000
    power_limit_range_mw: tuple[int, int] = (100_000, 350_000)
    root: bool = False
    clocks_supported: bool = True
    locked_clocks_mhz: tuple[int, int] | None = None


class FakeNvml:
    """The slice of the `pynvml` module heddle calls, backed by FakeGpu records.

    Errors are pynvml's own NVMLError classes (built from the real codes), so code under test
    sees exactly what the library raises; only the C library behind it is replaced. Like NVML,
    init/shutdown are counted and every call before init fails with NVML_ERROR_UNINITIALIZED.
    """

    NVMLError = pynvml.NVMLError
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST

    def __init__(self, gpus: Sequence[FakeGpu] = (), *, init_error: int | None = None) -> None:
        self.gpus = list(gpus)
        self.init_error = init_error
        self.init_count = 0
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _fail(self, code: int) -> None:
        raise pynvml.NVMLError(code)

    def _gpu(self, name: str, handle: Any, *args: Any) -> FakeGpu:
        self.calls.append((name, args))
        if self.init_count == 0:
            self._fail(pynvml.NVML_ERROR_UNINITIALIZED)
        if not isinstance(handle, FakeGpu):
            self._fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def _setter(self, name: str, handle: Any, *args: Any) -> FakeGpu:
        gpu = self._gpu(name, handle, *args)
        if not gpu.root:
            self._fail(pynvml.NVML_ERROR_NO_PERMISSION)
        return gpu

    def nvmlInit(self) -> None:
        self.calls.append(("nvmlInit", ()))
        if self.init_error is not None:
            self._fail(self.init_error)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", ()))
        if self.init_count == 0:
            self._fail(pynvml.NVML_ERROR_UNINITIALIZED)
        self.init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        if self.init_count == 0:
            self._fail(pynvml.NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if self.init_count == 0:
            self._fail(pynvml.NVML_ERROR_UNINITIALIZED)
        if not 0 <= index < len(self.gpus):
            self._fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        if gpu.power_error is not None:
            self._fail(gpu.power_error)
        return gpu.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if gpu.energy_mj is None:
            self._fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: Any) -> list[int]:
        return list(self._gpu("nvmlDeviceGetSupportedMemoryClocks", handle).memory_clocks_mhz)

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: Any, memory_mhz: int) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetSupportedGraphicsClocks", handle, memory_mhz)
        if memory_mhz not in gpu.memory_clocks_mhz:
            self._fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return list(gpu.graphics_clocks_mhz)

    def nvmlDeviceSetGpuLockedClocks(self, handle: Any, min_mhz: int, max_mhz: int) -> None:
        gpu = self._setter("nvmlDeviceSetGpuLockedClocks", handle, min_mhz, max_mhz)
        if not gpu.clocks_supported:
            self._fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if min_mhz > max_mhz:
            self._fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu.locked_clocks_mhz = (min_mhz, max_mhz)

    def nvmlDeviceResetGpuLockedClocks(self, handle: Any) -> None:
        self._setter("nvmlDeviceResetGpuLockedClocks", handle).locked_clocks_mhz = None

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> list[int]:
        return list(self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle).power_limit_range_mw)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: int) -> None:
        gpu = self._setter("nvmlDeviceSetPowerManagementLimit", handle, limit_mw)
        low, high = gpu.power_limit_range_mw
        if not low <= limit_mw <= high:
            self._fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu.power_limit_mw = limit_mw


@dataclass
class SysfsTree:
    """Builds sysfs-shaped files under `root` (pass `root` as a sensor's sysfs_root)."""

    root: Path
    written: list[str] = field(default_factory=list)

    def write(self, rel: str, value: Any) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
        self.written.append(rel)
        return path

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text().strip()

    def ina3221_hwmon(self, rails: Sequence[tuple[str, int, int]], i2c: str = "1-0040",
                      hwmon: str = "hwmon3") -> str:
        """JetPack 5+ layout: channel n gets in<n>_label, in<n>_input (mV), curr<n>_input (mA);
        channel 7 is the driver's "sum of shunt voltages", which has no current file."""
        folder = f"sys/bus/i2c/drivers/ina3221/{i2c}/hwmon/{hwmon}"
        for n, (label, millivolts, milliamps) in enumerate(rails, start=1):
            self.write(f"{folder}/in{n}_label", label)
            self.write(f"{folder}/in{n}_input", millivolts)
            self.write(f"{folder}/curr{n}_input", milliamps)
        self.write(f"{folder}/in7_label", "sum of shunt voltages")
        self.write(f"{folder}/in7_input", 120)
        return folder

    def ina3221_iio(self, rails: Sequence[tuple[str, int, int, int | None]], i2c: str = "6-0040",
                    device: str = "iio:device0") -> str:
        """JetPack 4 layout: rail_name_<n>, in_voltage<n>_input (mV), in_current<n>_input (mA),
        in_power<n>_input (mW; None leaves it out), channels from 0."""
        folder = f"sys/bus/i2c/drivers/ina3221x/{i2c}/{device}"
        for n, (name, millivolts, milliamps, milliwatts) in enumerate(rails):
            self.write(f"{folder}/rail_name_{n}", name)
            self.write(f"{folder}/in_voltage{n}_input", millivolts)
            self.write(f"{folder}/in_current{n}_input", milliamps)
            if milliwatts is not None:
                self.write(f"{folder}/in_power{n}_input", milliwatts)
        return folder

    def rapl_zone(self, index: int, name: str, energy_uj: int, max_range_uj: int = 262_143_328_850,
                  subzones: Sequence[str] = ("core", "uncore")) -> str:
        """A top-level powercap zone intel-rapl:<index> and its sub-zones (which readers must skip)."""
        folder = f"sys/class/powercap/intel-rapl:{index}"
        self.write(f"{folder}/name", name)
        self.write(f"{folder}/energy_uj", energy_uj)
        self.write(f"{folder}/max_energy_range_uj", max_range_uj)
        for m, sub in enumerate(subzones):
            self.write(f"sys/class/powercap/intel-rapl:{index}:{m}/name", sub)
            self.write(f"sys/class/powercap/intel-rapl:{index}:{m}/energy_uj", energy_uj // 2)
            self.write(f"sys/class/powercap/intel-rapl:{index}:{m}/max_energy_range_uj", max_range_uj)
        return folder

    def cpu_package(self, cpu: int, package: int) -> None:
        self.write(f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id", package)

    def cpufreq_policy(self, index: int, cpus: Sequence[int], min_khz: int, max_khz: int,
                       available_khz: Sequence[int] | None = None) -> str:
        """A cpufreq policy; `available_khz` None models intel_pstate (no frequency table)."""
        folder = f"sys/devices/system/cpu/cpufreq/policy{index}"
        self.write(f"{folder}/related_cpus", " ".join(map(str, cpus)))
        self.write(f"{folder}/affected_cpus", " ".join(map(str, cpus)))
        self.write(f"{folder}/cpuinfo_min_freq", min_khz)
        self.write(f"{folder}/cpuinfo_max_freq", max_khz)
        self.write(f"{folder}/scaling_min_freq", min_khz)
        self.write(f"{folder}/scaling_max_freq", max_khz)
        if available_khz is not None:
            self.write(f"{folder}/scaling_available_frequencies", " ".join(map(str, available_khz)))
        return folder

    def devfreq_node(self, name: str, available_hz: Sequence[int], min_hz: int | None = None,
                     max_hz: int | None = None) -> str:
        """A devfreq node (e.g. Orin's GPU 17000000.ga10b) with its frequency table in Hz."""
        folder = f"sys/class/devfreq/{name}"
        self.write(f"{folder}/available_frequencies", " ".join(map(str, available_hz)))
        self.write(f"{folder}/min_freq", min(available_hz) if min_hz is None else min_hz)
        self.write(f"{folder}/max_freq", max(available_hz) if max_hz is None else max_hz)
        self.write(f"{folder}/cur_freq", max(available_hz) if max_hz is None else max_hz)
        return folder


@contextlib.contextmanager
def shared_tempdir() -> Iterator[Path]:
    """A temporary directory another user can traverse (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="heddle-sysfs-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_unprivileged(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` without root, returning its (picklable) result or raising RuntimeError.

    Root bypasses file modes, so under root this forks, drops to UNPRIVILEGED_UID in the child
    and sends the result back through a pipe; otherwise it simply calls fn. The child only
    reads files with modules already imported, then leaves with os._exit.
    """
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return fn(*args)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(UNPRIVILEGED_UID)
            os.setuid(UNPRIVILEGED_UID)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:  # everything must come back to the parent as data
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(f"unprivileged call failed: {value}")
    return value
