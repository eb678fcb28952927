"""NVIDIA GPU DVFS through NVML: locked graphics clocks or the board power limit, both root-only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from heddle.backends.power.dvfs import ActuatorError, LevelActuator, dvfs_options, level_count, pick_levels
from heddle.backends.power.nvml import NvmlSession, nvml_error_text, nvml_index, open_nvml

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = ["NvmlClockActuator", "NvmlPowerLimitActuator", "detect_nvml_actuators"]


class _NvmlActuator(LevelActuator):
    """NVML calls with NVML's error codes turned into ActuatorError; owns its NVML session."""

    def __init__(self, session: NvmlSession, index: int, device: str, values: Sequence[int]) -> None:
        super().__init__(device, f"nvml:{index}", values)
        self.session = session
        self.handle = session.handle(index)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        nvml = self.session.nvml
        try:
            return fn(self.handle, *args)
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            raise ActuatorError(
                f"{what} refused: {nvml_error_text(exc)}",
                permission=code == nvml.NVML_ERROR_NO_PERMISSION,
                permanent=code == nvml.NVML_ERROR_NOT_SUPPORTED,
            ) from None

    def close(self) -> None:
        super().close()
        self.session.close()


class NvmlClockActuator(_NvmlActuator):
    """Caps the graphics clock with nvmlDeviceSetGpuLockedClocks(lowest supported, level's MHz)
    (Volta and newer); levels come from the supported graphics clocks at the highest memory clock."""

    KIND = "nvml-clocks"
    unit = "MHz"

    @classmethod
    def open(cls, session: NvmlSession, index: int, device: DeviceSpec) -> NvmlClockActuator:
        nvml = session.nvml
        handle = session.handle(index)
        memory_mhz = max(nvml.nvmlDeviceGetSupportedMemoryClocks(handle))
        supported = [int(c) for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, memory_mhz)]
        chosen = dvfs_options(device).get("values")
        if chosen:
            values = sorted({int(v) for v in chosen}, reverse=True)
        else:
            values = pick_levels(supported, level_count(device))
        return cls(session, index, device.id, values, min(supported))

    def __init__(self, session: NvmlSession, index: int, device: str, values: Sequence[int],
                 lowest_mhz: int) -> None:
        super().__init__(session, index, device, values)
        self.lowest_mhz = lowest_mhz

    def _apply(self, index: int) -> None:
        nvml = self.session.nvml
        self._call("nvmlDeviceSetGpuLockedClocks", nvml.nvmlDeviceSetGpuLockedClocks,
                   self.lowest_mhz, int(self._values[index]))

    def _restore(self) -> None:
        self._call("nvmlDeviceResetGpuLockedClocks", self.session.nvml.nvmlDeviceResetGpuLockedClocks)


class NvmlPowerLimitActuator(_NvmlActuator):
    """Sets the board power limit (nvmlDeviceSetPowerManagementLimit, mW): levels spread from
    the largest to the smallest allowed limit; the limit found at start is put back on close."""

    KIND = "nvml-power-limit"
    unit = "mW"

    @classmethod
    def open(cls, session: NvmlSession, index: int, device: DeviceSpec) -> NvmlPowerLimitActuator:
        nvml = session.nvml
        handle = session.handle(index)
        low_mw, high_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        count = level_count(device)
        step_mw = (high_mw - low_mw) / max(count - 1, 1)
        # Whole watts: the driver accepts any mW value, operators read watts.
        values = pick_levels([int(round((high_mw - i * step_mw) / 1000.0)) * 1000 for i in range(count)], count)
        return cls(session, index, device.id, values, int(nvml.nvmlDeviceGetPowerManagementLimit(handle)))

    def __init__(self, session: NvmlSession, index: int, device: str, values: Sequence[int],
                 original_mw: int) -> None:
        super().__init__(session, index, device, values)
        self.original_mw = original_mw

    def _apply(self, index: int) -> None:
        nvml = self.session.nvml
        self._call("nvmlDeviceSetPowerManagementLimit", nvml.nvmlDeviceSetPowerManagementLimit,
                   int(self._values[index]))

    def _restore(self) -> None:
        nvml = self.session.nvml
        self._call("nvmlDeviceSetPowerManagementLimit", nvml.nvmlDeviceSetPowerManagementLimit, self.original_mw)


def _open_one(device: DeviceSpec, ordinal: int, nvml_module: Any) -> tuple[LevelActuator | None, str]:
    session, reason = open_nvml(nvml_module)
    if session is None:
        return None, f"NVML: {reason}"
    index = nvml_index(device, ordinal)
    cls = NvmlPowerLimitActuator if dvfs_options(device)["kind"] == "nvml-power-limit" else NvmlClockActuator
    try:
        if not 0 <= index < session.count():
            raise ValueError(f"NVML index {index} out of range: NVML sees {session.count()} GPU(s)")
        return cls.open(session, index, device), ""
    except session.nvml.NVMLError as exc:
        session.close()
        return None, f"NVML GPU {index}: cannot read its clocks or limits: {nvml_error_text(exc)}"
    except ValueError as exc:
        session.close()
        return None, f"NVML: {exc}"


def detect_nvml_actuators(
    devices: Sequence[DeviceSpec], nvml_module: Any = None,
) -> tuple[dict[str, LevelActuator], dict[str, str]]:
    """NVML actuators for GPU devices (auto or nvml-*); per device, why not where it failed.
    Nothing is written here: a missing permission shows on the first set_level."""
    found: dict[str, LevelActuator] = {}
    reasons: dict[str, str] = {}
    gpus = [d for d in devices if d.kind == "gpu" or dvfs_options(d)["kind"].startswith("nvml")]
    for ordinal, device in enumerate(gpus):
        if dvfs_options(device)["kind"] not in ("auto", "nvml-clocks", "nvml-power-limit"):
            continue
        actuator, reason = _open_one(device, ordinal, nvml_module)
        if actuator is None:
            reasons[device.id] = reason
        else:
            found[device.id] = actuator
    return found, reasons
