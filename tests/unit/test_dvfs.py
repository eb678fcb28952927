"""DVFS actuators: NVML through FakeNvml, cpufreq and devfreq against temporary sysfs-shaped trees."""

from __future__ import annotations

import pynvml
import pytest

from heddle.backends.power.dvfs import (
    Applied,
    Disabled,
    Failed,
    NoneActuator,
    NoPermission,
    VirtualActuator,
    detect_actuators,
    pick_levels,
)
from heddle.backends.power.dvfs_nvml import NvmlClockActuator, NvmlPowerLimitActuator
from heddle.backends.power.testing import FakeGpu, FakeNvml, SysfsTree, run_unprivileged, shared_tempdir
from heddle.scheduler.specs import DeviceSpec

POLICY0 = "sys/devices/system/cpu/cpufreq/policy0"
GPU_NODE = "sys/class/devfreq/17000000.ga10b"
KHZ = [400_000, 800_000, 1_200_000, 1_600_000, 2_000_000]


def _gpu(**options) -> DeviceSpec:
    return DeviceSpec("gpu0", "gpu", "onnxruntime", 1, {"power": {"idle_w": 10, "active_w": [60, 40, 20]}, **options})


def _cpu(id_: str = "cpu0", cores=(0,), **options) -> DeviceSpec:
    return DeviceSpec(id_, "cpu", "onnxruntime", 1, {"cpu_affinity": list(cores),
                                                     "power": {"idle_w": 1, "active_w": [6, 4, 2]}, **options})


@pytest.fixture
def tree(tmp_path):
    return SysfsTree(tmp_path)


def test_pick_levels_spreads_from_fastest_to_slowest():
    """Levels include the highest and lowest values and are evenly spread, fastest first."""
    assert pick_levels([300, 100, 200, 500, 400], 3) == [500, 300, 100]
    assert pick_levels([1, 2], 5) == [2, 1]
    assert pick_levels([7, 9], 1) == [9]


def test_nvml_clock_levels_and_locking_with_root():
    """Levels come from the supported graphics clocks (one per power-model level); a level locks [lowest, clock]."""
    gpu = FakeGpu(root=True, graphics_clocks_mhz=tuple(range(1980, 194, -15)))
    nvml = FakeNvml([gpu])
    actuators, skipped = detect_actuators([_gpu()], nvml_module=nvml)
    actuator = actuators["gpu0"]
    assert isinstance(actuator, NvmlClockActuator) and skipped == []
    assert (actuator.kind, actuator.unit, actuator.levels()) == ("nvml-clocks", "MHz", [1980, 1080, 195])
    assert actuator.set_level(1) == Applied(1, 1080)
    assert gpu.locked_clocks_mhz == (195, 1080)
    assert actuator.level() == 1
    actuator.close()
    assert gpu.locked_clocks_mhz is None  # reset to the driver's default on close
    assert nvml.init_count == 0


def test_nvml_without_permission_turns_into_none_and_carries_on():
    """NVML_ERROR_NO_PERMISSION gives a NoPermission result naming the cause; later calls are no-op Disabled."""
    gpu = FakeGpu(root=False)
    nvml = FakeNvml([gpu])
    actuator = detect_actuators([_gpu()], nvml_module=nvml)[0]["gpu0"]
    result = actuator.set_level(1)
    assert isinstance(result, NoPermission) and result.level == 0
    assert "NVMLError_NoPermission" in result.reason and "DVFS is off for gpu0" in result.reason
    assert (actuator.kind, actuator.reason, actuator.level()) == ("none", result.reason, 0)
    calls = len(nvml.calls)
    assert actuator.set_level(2) == Disabled(0, result.reason)
    assert len(nvml.calls) == calls  # no further NVML calls once off
    assert gpu.locked_clocks_mhz is None
    actuator.close()
    assert nvml.init_count == 0


def test_nvml_clocks_not_supported_turn_the_actuator_off():
    """A GPU that cannot lock clocks answers Failed with the reason and stops trying."""
    actuator = detect_actuators([_gpu()], nvml_module=FakeNvml([FakeGpu(root=True, clocks_supported=False)]))[0]["gpu0"]
    result = actuator.set_level(1)
    assert isinstance(result, Failed) and "NVMLError_NotSupported" in result.reason
    assert actuator.kind == "none"


def test_nvml_out_of_range_level_is_a_caller_error():
    """Asking for a level the actuator does not have raises ValueError (a bug, not a hardware refusal)."""
    actuator = detect_actuators([_gpu()], nvml_module=FakeNvml([FakeGpu(root=True)]))[0]["gpu0"]
    with pytest.raises(ValueError, match="level 3 out of range 0..2"):
        actuator.set_level(3)


def test_nvml_power_limit_levels_and_restore():
    """The power-limit knob spreads whole watts over the allowed range and puts the original limit back on close."""
    gpu = FakeGpu(root=True, power_limit_mw=300_000, power_limit_range_mw=(100_000, 350_000))
    actuator = detect_actuators([_gpu(dvfs={"kind": "nvml-power-limit"})], nvml_module=FakeNvml([gpu]))[0]["gpu0"]
    assert isinstance(actuator, NvmlPowerLimitActuator)
    assert (actuator.unit, actuator.levels()) == ("mW", [350_000, 225_000, 100_000])
    assert actuator.set_level(1) == Applied(1, 225_000)
    assert gpu.power_limit_mw == 225_000
    actuator.close()
    assert gpu.power_limit_mw == 300_000


def test_nvml_unavailable_gives_none_with_reason(tree):
    """No NVML and no devfreq node: the GPU gets a NoneActuator whose reason names both, and set_level is Disabled."""
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    actuators, skipped = detect_actuators([_gpu()], tree.root, nvml)
    actuator = actuators["gpu0"]
    assert isinstance(actuator, NoneActuator) and actuator.kind == "none"
    assert "NVMLError_LibraryNotFound" in actuator.reason and "devfreq" in actuator.reason
    assert isinstance(actuator.set_level(0), Disabled)
    assert [u.what for u in skipped] == ["dvfs for gpu0"]


def test_cpufreq_caps_scaling_max_freq_and_restores(tree):
    """cpufreq levels come from scaling_available_frequencies; lowering below the floor lowers the floor too."""
    tree.cpufreq_policy(0, [0, 1], 400_000, 2_000_000, KHZ)
    tree.write(f"{POLICY0}/scaling_min_freq", 1_200_000)
    actuator = detect_actuators([_cpu()], tree.root)[0]["cpu0"]
    assert (actuator.kind, actuator.name, actuator.unit) == ("cpufreq", "cpufreq:policy0", "kHz")
    assert actuator.levels() == [2_000_000, 1_200_000, 400_000]
    assert actuator.set_level(2) == Applied(2, 400_000)
    assert (tree.read(f"{POLICY0}/scaling_min_freq"), tree.read(f"{POLICY0}/scaling_max_freq")) == ("400000", "400000")
    actuator.set_level(1)
    assert (tree.read(f"{POLICY0}/scaling_min_freq"), tree.read(f"{POLICY0}/scaling_max_freq")) == (
        "1200000", "1200000")
    actuator.close()
    assert (tree.read(f"{POLICY0}/scaling_min_freq"), tree.read(f"{POLICY0}/scaling_max_freq")) == (
        "1200000", "2000000")


def test_cpufreq_without_a_table_spreads_over_cpuinfo_range(tree):
    """With no frequency table (intel_pstate) levels are spread over cpuinfo_min..max; the current cap sets level()."""
    tree.cpufreq_policy(0, [0], 800_000, 3_200_000)
    tree.write(f"{POLICY0}/scaling_max_freq", 2_000_000)
    actuator = detect_actuators([_cpu(dvfs={"levels": 4})], tree.root)[0]["cpu0"]
    assert actuator.levels() == [3_200_000, 2_400_000, 1_600_000, 800_000]
    assert actuator.level() == 1  # 2.0 GHz found: nearest is 2.4 GHz


def test_cpufreq_follows_the_pinned_cores(tree):
    """A device pinned to cores 2-3 drives only their policy; devices on one policy share one actuator."""
    tree.cpufreq_policy(0, [0, 1], 400_000, 2_000_000, KHZ)
    tree.cpufreq_policy(2, [2, 3], 400_000, 2_000_000, KHZ)
    actuators, notes = detect_actuators([_cpu("a", (0,)), _cpu("b", (1,)), _cpu("c", (2, 3))], tree.root)
    assert actuators["a"] is actuators["b"] and actuators["a"].device == "a+b"
    assert actuators["c"].name == "cpufreq:policy2"
    assert [(n.what, n.reason) for n in notes] == [
        ("separate DVFS for a, b", "they share cpufreq:policy0: one level for all of them")]
    actuators["c"].set_level(2)
    assert tree.read("sys/devices/system/cpu/cpufreq/policy2/scaling_max_freq") == "400000"
    assert tree.read(f"{POLICY0}/scaling_max_freq") == "2000000"


def test_devfreq_caps_the_jetson_gpu(tree):
    """A GPU with no NVML uses the one devfreq GPU node: levels in Hz, set_level writes max_freq."""
    tree.devfreq_node("17000000.ga10b", [306_000_000, 510_000_000, 714_000_000, 918_000_000])
    tree.devfreq_node("3d00000.emc", [204_000_000, 3_199_000_000])
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    actuator = detect_actuators([_gpu()], tree.root, nvml)[0]["gpu0"]
    assert (actuator.kind, actuator.name, actuator.unit) == ("devfreq", "devfreq:17000000.ga10b", "Hz")
    assert actuator.levels() == [918_000_000, 510_000_000, 306_000_000]
    assert actuator.set_level(1) == Applied(1, 510_000_000)
    assert tree.read(f"{GPU_NODE}/max_freq") == "510000000"
    actuator.close()
    assert tree.read(f"{GPU_NODE}/max_freq") == "918000000"


def test_devfreq_node_from_config_and_explicit_values(tree):
    """dvfs.node picks a node by name and dvfs.values fixes the levels; values not in the table are refused."""
    tree.devfreq_node("15880000.nvdla0", [100, 200, 300])
    dla = DeviceSpec("dla0", "dla", "onnxruntime", 1, {"dvfs": {"kind": "devfreq", "node": "15880000.nvdla0",
                                                                "values": [300, 100]}})
    assert detect_actuators([dla], tree.root)[0]["dla0"].levels() == [300, 100]
    bad = DeviceSpec("dla0", "dla", "onnxruntime", 1, {"dvfs": {"kind": "devfreq", "node": "15880000.nvdla0",
                                                                "values": [250]}})
    actuator = detect_actuators([bad], tree.root)[0]["dla0"]
    assert actuator.kind == "none" and "[250] are not among the available" in actuator.reason


def test_failed_write_keeps_the_level_and_the_actuator(tree):
    """A write the kernel rejects (here: the file is a directory) is Failed, the level stays, and it may retry."""
    tree.cpufreq_policy(0, [0], 400_000, 2_000_000, KHZ)
    actuator = detect_actuators([_cpu()], tree.root)[0]["cpu0"]
    max_path = tree.root / POLICY0 / "scaling_max_freq"
    max_path.unlink()
    max_path.mkdir()
    result = actuator.set_level(1)
    assert isinstance(result, Failed) and result.level == 0 and "scaling_max_freq" in result.reason
    assert actuator.kind == "cpufreq"


def _set_level_unprivileged(root: str) -> tuple[str, str, str]:
    from pathlib import Path

    actuator = detect_actuators([_cpu()], Path(root))[0]["cpu0"]
    result = actuator.set_level(2)
    return type(result).__name__, result.reason, actuator.kind


def test_sysfs_write_without_permission_is_no_permission():
    """Without root the scaling_max_freq write is refused: NoPermission, and the actuator is off."""
    with shared_tempdir() as root:
        SysfsTree(root).cpufreq_policy(0, [0], 400_000, 2_000_000, KHZ)
        for name in ("scaling_min_freq", "scaling_max_freq"):  # read-only to anyone but root, as in sysfs
            (root / POLICY0 / name).chmod(0o444)
        kind, reason, after = run_unprivileged(_set_level_unprivileged, str(root))
        assert SysfsTree(root).read(f"{POLICY0}/scaling_max_freq") == "2000000"
    assert (kind, after) == ("NoPermission", "none")
    assert "permission denied (needs root)" in reason


def test_no_knobs_on_this_kind_of_box(tree):
    """An empty root gives every device a NoneActuator with its reason; virtual and none come from config."""
    devices = [_cpu(), DeviceSpec("py0", "cpu", "python", 2, {"dvfs": {"kind": "none"}}),
               DeviceSpec("sim0", "dla", "onnxruntime", 1, {"dvfs": {"kind": "virtual", "levels": 2}})]
    actuators, skipped = detect_actuators(devices, tree.root)
    assert actuators["cpu0"].kind == "none" and "exposes no CPU frequency scaling" in actuators["cpu0"].reason
    assert actuators["py0"].reason == 'dvfs.kind is "none" in config'
    virtual = actuators["sim0"]
    assert isinstance(virtual, VirtualActuator) and virtual.levels() == [0, 1]
    assert virtual.set_level(1) == Applied(1, 1)
    assert sorted(u.what for u in skipped) == ["dvfs for cpu0", "dvfs for py0"]


def test_cpufreq_policy_not_covering_the_cores(tree):
    """A device pinned to cores no policy covers gets a NoneActuator saying so."""
    tree.cpufreq_policy(0, [0, 1], 400_000, 2_000_000, KHZ)
    actuator = detect_actuators([_cpu("cpu9", (9,))], tree.root)[0]["cpu9"]
    assert actuator.kind == "none" and "covers its cores" in actuator.reason
