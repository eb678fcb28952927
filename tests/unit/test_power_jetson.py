"""Jetson INA3221 rails read from temporary sysfs-shaped trees in both driver layouts."""

from __future__ import annotations

import pynvml
import pytest

from heddle.backends.power.jetson import detect_ina3221, discover_rails, rail_device_kinds
from heddle.backends.power.sensors import BOARD, ESTIMATED, MEASURED, box_power_w, detect_sensors
from heddle.backends.power.testing import FakeNvml, SysfsTree
from heddle.scheduler.specs import DeviceSpec

CPU = DeviceSpec("cpu0", "cpu", "onnxruntime", 1, {"cpu_affinity": [0, 1]})
GPU = DeviceSpec("gpu0", "gpu", "onnxruntime")
DLA = DeviceSpec("dla0", "dla", "onnxruntime")


@pytest.fixture
def tree(tmp_path):
    return SysfsTree(tmp_path)


def _by_sensor(samples):
    return {s.sensor: s for s in samples}


def test_orin_nx_hwmon_rails_map_to_devices_and_board(tree):
    """Orin NX (JetPack 5+): VDD_IN is the board, VDD_CPU_GPU_CV feeds cpu+gpu+dla, VDD_SOC feeds no device."""
    tree.ina3221_hwmon([("VDD_IN", 5000, 2000), ("VDD_CPU_GPU_CV", 5000, 1000), ("VDD_SOC", 5000, 400)])
    sensors, skipped = detect_ina3221([CPU, GPU, DLA], tree.root)
    assert skipped == []
    [sensor] = sensors
    assert sensor.devices == ("cpu0", "dla0", "gpu0")
    samples = _by_sensor(sensor.read(3.0))
    assert set(samples) == {"ina3221:VDD_IN", "ina3221:VDD_CPU_GPU_CV", "ina3221:VDD_SOC"}  # no channel 7
    assert (samples["ina3221:VDD_IN"].device, samples["ina3221:VDD_IN"].power_w) == (BOARD, 10.0)
    assert (samples["ina3221:VDD_CPU_GPU_CV"].device, samples["ina3221:VDD_CPU_GPU_CV"].power_w) == (
        "cpu0+dla0+gpu0", 5.0)
    assert samples["ina3221:VDD_SOC"].device == "rail:VDD_SOC"
    assert all(s.source == MEASURED and s.energy_j is None and s.t_s == 3.0 for s in samples.values())
    assert box_power_w(list(samples.values())) == 10.0


def test_agx_orin_two_chips_skip_nc_channels_and_sum_for_the_box(tree):
    """AGX Orin: NC channels are skipped, GPU and CPU rails map separately, and the box is the sum (no board rail)."""
    tree.ina3221_hwmon([("VDD_GPU_SOC", 19000, 500), ("VDD_CPU_CV", 19000, 200), ("VIN_SYS_5V0", 5000, 300)],
                       i2c="1-0040", hwmon="hwmon1")
    tree.ina3221_hwmon([("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 1800, 100), ("NC", 0, 0)], i2c="1-0041", hwmon="hwmon2")
    rails, _ = discover_rails(tree.root)
    assert [r.name for r in rails] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    sensors, _ = detect_ina3221([CPU, GPU, DLA], tree.root)
    samples = _by_sensor(sensors[0].read(0.0))
    assert samples["ina3221:VDD_GPU_SOC"].device == "gpu0"
    assert samples["ina3221:VDD_CPU_CV"].device == "cpu0+dla0"
    assert samples["ina3221:VDD_GPU_SOC"].power_w == pytest.approx(9.5)
    assert box_power_w(list(samples.values())) == pytest.approx(9.5 + 3.8 + 1.5 + 0.18)


def test_iio_layout_reads_power_files_and_falls_back_to_volts_times_amps(tree):
    """Nano (JetPack 4): in_power<N>_input in mW is used, and V x I where the power file is missing."""
    tree.ina3221_iio([("POM_5V_IN", 5000, 800, 4000), ("POM_5V_GPU", 5000, 200, 1000),
                      ("POM_5V_CPU", 5000, 300, None)])
    sensors, _ = detect_ina3221([CPU, GPU], tree.root)
    samples = _by_sensor(sensors[0].read(1.0))
    assert (samples["ina3221:POM_5V_IN"].device, samples["ina3221:POM_5V_IN"].power_w) == (BOARD, 4.0)
    assert (samples["ina3221:POM_5V_GPU"].device, samples["ina3221:POM_5V_GPU"].power_w) == ("gpu0", 1.0)
    assert (samples["ina3221:POM_5V_CPU"].device, samples["ina3221:POM_5V_CPU"].power_w) == ("cpu0", 1.5)


def test_readings_follow_the_files(tree):
    """A new current in the file shows in the next read: nothing is cached."""
    folder = tree.ina3221_hwmon([("VDD_GPU_SOC", 10000, 100)])
    sensors, _ = detect_ina3221([GPU], tree.root)
    assert sensors[0].read(0.0)[0].power_w == 1.0
    tree.write(f"{folder}/curr1_input", 750)
    assert sensors[0].read(1.0)[0].power_w == 7.5


def test_config_rail_overrides_name_matching(tree):
    """A device naming a rail in sensor.rail owns it; the name heuristics then leave that device alone."""
    tree.ina3221_hwmon([("VDD_IN", 5000, 2000), ("VDD_CPU_GPU_CV", 5000, 1000), ("VDD_SOC", 5000, 400)])
    soc_gpu = DeviceSpec("gpu0", "gpu", "onnxruntime", 1, {"sensor": {"rail": "VDD_SOC"}})
    sensors, _ = detect_ina3221([CPU, soc_gpu], tree.root)
    devices = {s.sensor: s.device for s in sensors[0].read(0.0)}
    assert devices["ina3221:VDD_SOC"] == "gpu0"
    assert devices["ina3221:VDD_CPU_GPU_CV"] == "cpu0"


def test_missing_named_rail_is_reported(tree):
    """A sensor.rail that does not exist is listed with the device that asked for it."""
    tree.ina3221_hwmon([("VDD_IN", 5000, 2000)])
    wants = DeviceSpec("gpu0", "gpu", "onnxruntime", 1, {"sensor": {"rail": "VDD_GPU"}})
    _, skipped = detect_ina3221([wants], tree.root)
    assert [(u.what, u.reason) for u in skipped] == [("ina3221 for gpu0", "rail 'VDD_GPU' not found or not readable")]


def test_unreadable_rail_is_skipped_at_detection_and_left_out_at_read(tree):
    """A rail whose file cannot be read is skipped with the path; one that breaks later is left out of the read."""
    folder = tree.ina3221_hwmon([("VDD_GPU_SOC", 10000, 100), ("VDD_CPU_CV", 10000, 100)])
    (tree.root / folder / "in1_input").unlink()
    sensors, skipped = detect_ina3221([CPU, GPU], tree.root)
    assert [u.what for u in skipped] == ["ina3221:VDD_GPU_SOC"]
    assert "in1_input" in skipped[0].reason
    (tree.root / folder / "curr2_input").unlink()
    assert sensors[0].read(1.0) == []
    assert "curr2_input" in sensors[0].last_error


def test_not_a_jetson(tree):
    """An empty root says there are no INA3221 rails."""
    sensors, skipped = detect_ina3221([GPU], tree.root)
    assert sensors == []
    assert "no INA3221 rails" in skipped[0].reason


def test_detect_sensors_measures_rails_and_estimates_the_rest(tree):
    """On a Jetson tree without NVML: devices on a rail are measured, a device on no rail is estimated."""
    tree.ina3221_hwmon([("VDD_IN", 5000, 2000), ("VDD_GPU_SOC", 5000, 1000)])
    npu = DeviceSpec("npu0", "npu", "onnxruntime", 1, {"power": {"idle_w": 0.5, "active_w": [3.0]}})
    sensors, skipped = detect_sensors([GPU, npu], tree.root, FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
                                      busy_fraction=lambda d: 0.0)
    assert [s.name for s in sensors] == ["ina3221", "estimate"]
    samples = [s for sensor in sensors for s in sensor.read(0.0)]
    assert {(s.device, s.source) for s in samples} == {(BOARD, MEASURED), ("gpu0", MEASURED), ("npu0", ESTIMATED)}
    assert any(u.what == "nvml (gpu0)" for u in skipped)


def test_rail_name_tokens():
    """Rail names map to device kinds by their tokens, not by substrings."""
    assert rail_device_kinds("VDD_CPU_GPU_CV") == {"cpu", "gpu", "dla"}
    assert rail_device_kinds("POM_5V_GPU") == {"gpu"}
    assert rail_device_kinds("VDD_SOC") == frozenset()
    assert rail_device_kinds("VDD_GPUX") == frozenset()


def test_sensor_kind_estimate_and_none_are_honoured(tree):
    """sensor.kind "estimate" and "none" keep devices off the rails: rails feeding only them are not read
    (nothing counts twice), while rails feeding no device still are."""
    tree.ina3221_hwmon([("VDD_IN", 5000, 3000), ("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 1000)],
                       i2c="1-0040")
    tree.ina3221_hwmon([("VDD_SOC", 5000, 200)], i2c="1-0041", hwmon="hwmon4")
    gpu = DeviceSpec("gpu0", "gpu", "onnxruntime", 1, {"sensor": {"kind": "estimate"}})
    cpu = DeviceSpec("cpu0", "cpu", "onnxruntime", 1, {"sensor": {"kind": "none"}})
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sensors, _ = detect_sensors([gpu, cpu], tree.root, nvml, busy_fraction=lambda d: 0.0)
    samples = [s for sensor in sensors for s in sensor.read(0.0)]
    assert {(s.device, s.source) for s in samples} == {
        (BOARD, MEASURED), ("rail:VDD_SOC", MEASURED), ("gpu0", ESTIMATED)}
    assert box_power_w(samples) == 15.0
    assert nvml.calls == []  # gpu0 asked for the estimate: NVML is not even opened
