"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py): the session, GPU indices, the power sensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heddle.backends.power.sensors import (
    MEASURED,
    PowerSample,
    Unavailable,
    domain_devices,
    domain_of,
    sensor_options,
)

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec

__all__ = ["NvmlSensor", "NvmlSession", "detect_nvml", "nvml_error_text", "nvml_index", "open_nvml"]


def nvml_error_text(exc: BaseException) -> str:
    """'NVMLError_NoPermission: Insufficient Permissions' — the class names the code for operators."""
    return f"{type(exc).__name__}: {exc}"


class NvmlSession:
    """One nvmlInit/nvmlShutdown pair (NVML counts them) shared by a sensor and actuators."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self._open = True

    def handle(self, index: int) -> Any:
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    def count(self) -> int:
        return int(self.nvml.nvmlDeviceGetCount())

    def close(self) -> None:
        if self._open:
            self._open = False
            self.nvml.nvmlShutdown()


def open_nvml(nvml_module: Any = None) -> tuple[NvmlSession | None, str]:
    """An initialised session, or None and the reason (no module, no library, no driver)."""
    if nvml_module is None:
        try:
            import pynvml as nvml_module
        except ImportError:
            return None, "the pynvml module is missing (pip install nvidia-ml-py)"
    try:
        return NvmlSession(nvml_module), ""
    except nvml_module.NVMLError as exc:
        # NVMLError_LibraryNotFound: no libnvidia-ml.so, i.e. no NVIDIA driver on this machine.
        return None, f"nvmlInit failed: {nvml_error_text(exc)}"


def nvml_index(device: DeviceSpec, ordinal: int) -> int:
    """The NVML index of a GPU device: `sensor.index`, else the CUDA `device_id` in its
    provider options, else its position among the GPU devices. NVML numbers GPUs in PCI bus
    order; CUDA does too only with CUDA_DEVICE_ORDER=PCI_BUS_ID and no CUDA_VISIBLE_DEVICES,
    so set `sensor.index` when those differ."""
    explicit = sensor_options(device).get("index")
    if explicit is not None:
        return int(explicit)
    for options in device.options.get("provider_options", ()) or ():
        if isinstance(options, dict) and "device_id" in options:
            return int(options["device_id"])
    return ordinal


@dataclass(slots=True)
class _Gpu:
    device: str  # the domain: one device id, or "+"-joined ids of devices on this GPU
    index: int
    handle: Any
    has_energy: bool
    energy_base_mj: int = 0


class NvmlSensor:
    """Per GPU: nvmlDeviceGetPowerUsage (mW; a 1 s average on Ampere and newer except GA100,
    instantaneous before) and nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded,
    Volta and newer) as energy since this sensor's first read."""

    name = "nvml"

    def __init__(self, session: NvmlSession, gpus: Sequence[_Gpu]) -> None:
        self.session = session
        self._gpus = list(gpus)
        self.devices = tuple(d for g in self._gpus for d in domain_devices(g.device))
        self.last_error = ""

    def read(self, now_s: float) -> list[PowerSample]:
        nvml = self.session.nvml
        samples = []
        for gpu in self._gpus:
            try:
                power_w = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
                energy_j = None
                if gpu.has_energy:
                    energy_j = (nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) - gpu.energy_base_mj) / 1000.0
            except nvml.NVMLError as exc:  # a lost GPU or a transient failure: leave the reading out
                self.last_error = f"GPU {gpu.index} ({gpu.device}): {nvml_error_text(exc)}"
                continue
            samples.append(PowerSample(gpu.device, power_w, energy_j, MEASURED, f"nvml:{gpu.index}", now_s))
        return samples

    def close(self) -> None:
        self.session.close()


def _probe(session: NvmlSession, domain: str, index: int, count: int) -> tuple[_Gpu | None, str]:
    """The GPU if its power can be read; the energy counter is optional."""
    nvml = session.nvml
    if not 0 <= index < count:
        return None, f"NVML index {index} out of range: NVML sees {count} GPU(s)"
    try:
        handle = session.handle(index)
        nvml.nvmlDeviceGetPowerUsage(handle)
    except nvml.NVMLError as exc:
        return None, f"GPU {index} power cannot be read: {nvml_error_text(exc)}"
    try:
        base_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except nvml.NVMLError:  # pre-Volta: power only, energy left to the consumer to integrate
        return _Gpu(domain, index, handle, False), ""
    return _Gpu(domain, index, handle, True, base_mj), ""


def detect_nvml(devices: Sequence[DeviceSpec], nvml_module: Any = None) -> tuple[list[NvmlSensor], list[Unavailable]]:
    """An NvmlSensor over the GPU devices whose power NVML can read, and why others were skipped."""
    gpus_wanted = [d for d in devices if d.kind == "gpu" or sensor_options(d)["kind"] == "nvml"]
    if not gpus_wanted:
        return [], []
    session, reason = open_nvml(nvml_module)
    if session is None:
        return [], [Unavailable(f"nvml ({', '.join(d.id for d in gpus_wanted)})", reason)]
    # Devices on one physical GPU (say an ORT device and a Triton one) share its reading.
    by_index: dict[int, list[str]] = {}
    for ordinal, device in enumerate(gpus_wanted):
        by_index.setdefault(nvml_index(device, ordinal), []).append(device.id)
    count = session.count()
    gpus, skipped = [], []
    for index, ids in by_index.items():
        gpu, why = _probe(session, domain_of(ids), index, count)
        if gpu is None:
            skipped += [Unavailable(f"nvml for {device}", why) for device in ids]
        else:
            gpus.append(gpu)
    if not gpus:
        session.close()
        return [], skipped
    return [NvmlSensor(session, gpus)], skipped
