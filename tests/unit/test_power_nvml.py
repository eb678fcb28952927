"""NVML power sensing: the real pynvml on this GPU-less box, and FakeNvml at the pynvml seam."""

from __future__ import annotations

import pynvml
import pytest

from heddle.backends.power.nvml import NvmlSensor, detect_nvml, nvml_index, open_nvml
from heddle.backends.power.sensors import ESTIMATED, MEASURED, detect_sensors
from heddle.backends.power.testing import FakeGpu, FakeNvml
from heddle.scheduler.specs import DeviceSpec


def _gpu(id_: str, **options) -> DeviceSpec:
    return DeviceSpec(id_, "gpu", "onnxruntime", 1, options)


def _driver_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is installed: the no-driver path cannot be seen")
def test_real_pynvml_without_a_driver_reports_library_not_found():
    """On a machine without a driver the real pynvml fails in nvmlInit, and detection says so instead of raising."""
    sensors, skipped = detect_nvml([_gpu("gpu0")])
    assert sensors == []
    assert len(skipped) == 1
    assert skipped[0].what == "nvml (gpu0)"
    assert "NVMLError_LibraryNotFound" in skipped[0].reason


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is installed: the no-driver path cannot be seen")
def test_detect_sensors_without_a_driver_estimates_the_gpu():
    """With no NVML the GPU device falls back to the estimate, labelled estimated, and the reason is listed."""
    sensors, skipped = detect_sensors([_gpu("gpu0", power={"idle_w": 10.0, "active_w": [50.0]})],
                                      busy_fraction=lambda device: 1.0)
    [sample] = [s for sensor in sensors for s in sensor.read(1.0)]
    assert (sample.device, sample.source, sample.sensor, sample.power_w) == ("gpu0", ESTIMATED, "estimate", 50.0)
    assert any("NVMLError_LibraryNotFound" in u.reason for u in skipped)


def test_power_and_energy_are_read_in_watts_and_joules():
    """Power in mW becomes watts and the mJ energy counter becomes joules since the sensor's first read."""
    gpu = FakeGpu(power_mw=150_000, energy_mj=5_000_000)
    sensors, skipped = detect_nvml([_gpu("gpu0")], FakeNvml([gpu]))
    assert skipped == []
    [sensor] = sensors
    [first] = sensor.read(10.0)
    assert (first.device, first.power_w, first.energy_j, first.source, first.sensor, first.t_s) == (
        "gpu0", 150.0, 0.0, MEASURED, "nvml:0", 10.0)
    gpu.power_mw, gpu.energy_mj = 212_500, 5_002_500
    [second] = sensor.read(11.0)
    assert (second.power_w, second.energy_j) == (212.5, 2.5)


def test_gpu_without_energy_counter_still_reports_power():
    """A pre-Volta GPU (energy NOT_SUPPORTED) gives power samples with energy_j None."""
    sensors, _ = detect_nvml([_gpu("gpu0")], FakeNvml([FakeGpu(power_mw=40_000, energy_mj=None)]))
    [sample] = sensors[0].read(1.0)
    assert (sample.power_w, sample.energy_j) == (40.0, None)


def test_gpu_index_follows_cuda_device_id_then_explicit_index():
    """provider_options device_id picks the NVML GPU, and sensor.index overrides it."""
    nvml = FakeNvml([FakeGpu(power_mw=100_000), FakeGpu(power_mw=200_000), FakeGpu(power_mw=300_000)])
    devices = [
        _gpu("a", provider_options=[{"device_id": 1}, {}]),
        _gpu("b", provider_options=[{"device_id": 1}], sensor={"index": 2}),
    ]
    assert [nvml_index(d, 0) for d in devices] == [1, 2]
    sensors, _ = detect_nvml(devices, nvml)
    assert {(s.device, s.sensor, s.power_w) for s in sensors[0].read(0.0)} == {
        ("a", "nvml:1", 200.0), ("b", "nvml:2", 300.0)}


def test_index_out_of_range_is_skipped_with_reason():
    """A device pointing past the GPUs NVML sees is skipped, and the session is released."""
    nvml = FakeNvml([FakeGpu()])
    sensors, skipped = detect_nvml([_gpu("gpu3", sensor={"index": 3})], nvml)
    assert sensors == []
    assert "index 3 out of range: NVML sees 1 GPU(s)" in skipped[0].reason
    assert nvml.init_count == 0


def test_unreadable_power_falls_back_to_the_estimate():
    """A GPU whose power NVML cannot read (NOT_SUPPORTED) is estimated, with NVML's error as the reason."""
    nvml = FakeNvml([FakeGpu(power_error=pynvml.NVML_ERROR_NOT_SUPPORTED)])
    sensors, skipped = detect_sensors([_gpu("gpu0")], nvml_module=nvml, busy_fraction=lambda d: 0.0)
    assert [s.name for s in sensors] == ["estimate"]
    assert any(u.what == "nvml for gpu0" and "NVMLError_NotSupported" in u.reason for u in skipped)
    assert nvml.init_count == 0


def test_init_failure_is_a_reason_not_a_crash():
    """nvmlInit raising (no library) gives no session and the error class in the reason."""
    session, reason = open_nvml(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert session is None
    assert reason == "nvmlInit failed: NVMLError_LibraryNotFound: NVML Shared Library Not Found"


def test_failed_read_leaves_the_sample_out_and_keeps_the_error():
    """A GPU lost after detection yields no sample for it, the others still read, and read() does not raise."""
    lost, fine = FakeGpu(), FakeGpu(power_mw=90_000)
    sensors, _ = detect_nvml([_gpu("gpu0"), _gpu("gpu1")], FakeNvml([lost, fine]))
    lost.power_error = pynvml.NVML_ERROR_GPU_IS_LOST
    samples = sensors[0].read(2.0)
    assert [(s.device, s.power_w) for s in samples] == [("gpu1", 90.0)]
    assert "gpu0" in sensors[0].last_error and "NVMLError_GpuIsLost" in sensors[0].last_error


def test_close_balances_init_and_is_idempotent():
    """Closing the sensor shuts NVML down exactly once, however often close() is called."""
    nvml = FakeNvml([FakeGpu()])
    sensors, _ = detect_nvml([_gpu("gpu0")], nvml)
    assert nvml.init_count == 1 and isinstance(sensors[0], NvmlSensor)
    sensors[0].close()
    sensors[0].close()
    assert nvml.init_count == 0
    assert [name for name, _ in nvml.calls].count("nvmlShutdown") == 1


def test_non_gpu_devices_do_not_touch_nvml():
    """Detection over CPU devices only never initialises NVML."""
    nvml = FakeNvml([FakeGpu()])
    assert detect_nvml([DeviceSpec("cpu0", "cpu", "onnxruntime")], nvml) == ([], [])
    assert nvml.calls == []


def test_devices_on_one_gpu_share_one_reading():
    """Two heddle devices on the same NVML GPU get one sample for both, so the GPU is not counted twice."""
    devices = [_gpu("ort0", provider_options=[{"device_id": 0}]),
               DeviceSpec("trt0", "gpu", "triton", 1, {"sensor": {"index": 0}})]
    sensors, _ = detect_nvml(devices, FakeNvml([FakeGpu(power_mw=80_000)]))
    assert sensors[0].devices == ("ort0", "trt0")
    assert [(s.device, s.power_w) for s in sensors[0].read(0.0)] == [("ort0+trt0", 80.0)]
