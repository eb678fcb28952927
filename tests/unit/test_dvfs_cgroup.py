"""The CPU-bandwidth actuator against cgroup-shaped temporary trees: v1/v2 detection, the files
it writes per level, its ladder and power model, and the paths that turn it off."""

from __future__ import annotations

from pathlib import Path

import pytest

from heddle.backends.power.cgroup import CgroupError, find_hierarchy, group_name
from heddle.backends.power.dvfs import Applied, detect_actuators, level_count
from heddle.backends.power.dvfs_cgroup import (
    CgroupActuator,
    CgroupRegistry,
    bandwidth_percents,
    check_quotas,
    full_cpus,
    registry_for,
    with_bandwidth_clocks,
)
from heddle.backends.power.estimate import estimate_power_w, power_model_of
from heddle.backends.power.testing import SysfsTree, run_unprivileged, shared_tempdir
from heddle.scheduler.specs import DeviceSpec

V1_MOUNT = "sys/fs/cgroup/cpu,cpuacct"
V2_MOUNT = "sys/fs/cgroup"


def _dev(id_: str = "cpu0", slots: int = 1, **dvfs) -> DeviceSpec:
    return DeviceSpec(id_, "cpu", "python", slots, {"cpu_affinity": [0], "dvfs": {"kind": "cgroup", **dvfs},
                                                     "power": {"idle_w": 1.0, "active_w": 5.0}})


def v1_tree(tree: SysfsTree, own: str = "/docker/abc") -> Path:
    """A v1 box: cpu and cpuacct co-mounted (the common layout), this process in `own`."""
    tree.write("proc/self/mounts", "sysfs /sys sysfs rw 0 0\n"
               f"cgroup /{V1_MOUNT} cgroup rw,nosuid,cpu,cpuacct 0 0\n"
               "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0")
    tree.write("proc/self/cgroup", f"5:memory:{own}\n4:cpu,cpuacct:{own}\n0::/")
    parent = f"{V1_MOUNT}{own}"
    for name, value in (("tasks", "1 2"), ("cpu.cfs_period_us", 100000), ("cpu.cfs_quota_us", -1)):
        tree.write(f"{parent}/{name}", value)
    return tree.root / parent


def v2_tree(tree: SysfsTree, own: str = "/system.slice/heddle.service", controllers: str = "cpuset cpu io") -> Path:
    tree.write("proc/self/mounts", f"cgroup2 /{V2_MOUNT} cgroup2 rw,nsdelegate 0 0")
    tree.write("proc/self/cgroup", f"0::{own}")
    tree.write(f"{V2_MOUNT}/cgroup.controllers", controllers)
    parent = f"{V2_MOUNT}{own}"
    tree.write(f"{parent}/cgroup.threads", "1 2")
    tree.write(f"{parent}/cgroup.subtree_control", "")
    return tree.root / parent


@pytest.fixture
def tree(tmp_path):
    return SysfsTree(tmp_path)


def test_v1_hierarchy_is_this_process_cgroup_under_the_cpu_mount(tree):
    """The co-mounted cpu,cpuacct hierarchy is found, and the parent is this process's own cgroup there."""
    parent = v1_tree(tree)
    hierarchy = find_hierarchy(tree.root)
    assert (hierarchy.version, hierarchy.parent, hierarchy.threads_file) == (1, parent, "tasks")


def test_v2_needs_cpu_in_the_controllers(tree):
    """v2 is used when cgroup.controllers offers cpu; without it the reason says what is missing."""
    parent = v2_tree(tree)
    assert (find_hierarchy(tree.root).version, find_hierarchy(tree.root).parent) == (2, parent)
    tree.write(f"{V2_MOUNT}/cgroup.controllers", "memory pids")
    with pytest.raises(CgroupError, match="no cgroup hierarchy with the cpu controller"):
        find_hierarchy(tree.root)


def test_v1_levels_write_quota_over_the_period(tree):
    """A level's share of the device's CPUs becomes cfs_quota_us over a 10 ms period; level 0 is -1 (no cap)."""
    parent = v1_tree(tree)
    actuator = detect_actuators([_dev(slots=1)], tree.root)[0]["cpu0"]
    group = parent / group_name("cpu0")
    assert isinstance(actuator, CgroupActuator)
    assert (actuator.kind, actuator.unit, actuator.levels()) == ("cgroup", "%", [100, 75, 50, 25])
    assert (group / "cpu.cfs_period_us").read_text() == "10000"
    assert (group / "cpu.cfs_quota_us").read_text() == "-1"
    assert actuator.set_level(3) == Applied(3, 25)
    assert (group / "cpu.cfs_quota_us").read_text() == "2500"
    registry = registry_for(tree.root)
    registry.join(_dev())
    assert registry.group(_dev()).threads() != set()  # this thread's TID went to the group's tasks


def test_a_ladder_below_100_percent_caps_the_group_from_its_start(tree):
    """An emulated slow device (`values = [58]`, one level): the group is capped at 58% as it is made,
    by its first worker thread or by detection, though no level is ever set; a ladder from 100 stays uncapped."""
    parent = v1_tree(tree)
    registry_for(tree.root).join(_dev("dla0", values=[58]))
    assert (parent / group_name("dla0") / "cpu.cfs_quota_us").read_text() == "5800"
    detect_actuators([_dev("cpu2", values=[15, 8])], tree.root)
    assert (parent / group_name("cpu2") / "cpu.cfs_quota_us").read_text() == "1500"
    detect_actuators([_dev("cpu3", values=[100, 50])], tree.root)
    assert (parent / group_name("cpu3") / "cpu.cfs_quota_us").read_text() == "-1"


def test_v2_group_is_threaded_and_cpu_max_carries_quota_and_period(tree):
    """Under v2 the group is made threaded, cpu is enabled below the parent, threads go to cgroup.threads."""
    parent = v2_tree(tree)
    device = _dev("cpu1", slots=2, period_us=20000)
    device.options["cpu_affinity"] = [0, 1]
    actuator = detect_actuators([device], tree.root)[0]["cpu1"]
    group = parent / group_name("cpu1")
    assert (group / "cgroup.type").read_text() == "threaded"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu"
    assert (group / "cpu.max").read_text() == "max 20000"
    assert actuator.set_level(2) == Applied(2, 50)
    assert (group / "cpu.max").read_text() == "20000 20000"  # half of two CPUs
    registry_for(tree.root).join(device)
    assert (group / "cgroup.threads").read_text().isdigit()


def test_ladder_from_values_levels_or_the_default():
    """values are percents (sorted fastest first); levels spread 100..25; the default is 100, 75, 50, 25."""
    assert bandwidth_percents(_dev(values=[25, 100, 60])) == [100, 60, 25]
    assert bandwidth_percents(_dev(levels=3)) == [100, 62, 25]
    assert bandwidth_percents(_dev(levels=1)) == [100]
    assert level_count(_dev()) == 4
    with pytest.raises(ValueError, match="percents 1..100"):
        bandwidth_percents(_dev(values=[100, 0]))


def test_a_level_whose_quota_the_kernel_would_raise_is_refused_at_start():
    """The kernel's minimum quota is 1 ms: 15% of a 2 ms period (0.3 ms) would be raised to 1 ms
    and run at 50%, so such a ladder is refused, naming the device, the levels and the period that
    keeps them; at the default 10 ms period, or a 6.7 ms one, 15% is kept."""
    with pytest.raises(ValueError, match=r"device cpu0: dvfs levels \[15, 11\]% of a 2000 us .*\(11% would run at "
                                         r"50%\); set dvfs.period_us to at least 9091"):
        check_quotas(_dev(values=[100, 15, 11], period_us=2000))
    check_quotas(_dev(values=[100, 15]))
    check_quotas(_dev(values=[15], period_us=6667))
    from server_fixtures import parse_test_config

    from heddle.server.config.schema import ConfigError

    text = """
[[devices]]
id = "py0"
backend = "python"
dvfs = { kind = "cgroup", values = [100, 15], period_us = 2000 }
"""
    with pytest.raises(ConfigError, match=r"<test config>: device py0: dvfs levels \[15\]%"):
        parse_test_config(text)


def test_full_share_is_the_cores_its_threads_can_use():
    """100% is min(cores it may use, slots x intra-op threads): one thread cannot use two cores."""
    assert full_cpus(DeviceSpec("a", "cpu", "onnxruntime", 1, {"cpu_affinity": [0, 1]})) == 1.0
    assert full_cpus(DeviceSpec("b", "cpu", "onnxruntime", 2, {"cpu_affinity": [0, 1], "intra_op_threads": 2})) == 2.0


def test_estimate_scales_busy_power_with_the_bandwidth_share():
    """At 25% a busy device draws idle + 0.25 x (full - idle): the clock is the same, it runs a quarter of the time."""
    model, note = power_model_of(_dev())
    assert note == "" and model.active_w == (5.0, 4.0, 3.0, 2.0)
    assert estimate_power_w(model, 1.0, 3) == pytest.approx(2.0)
    assert estimate_power_w(model, 0.5, 0) == pytest.approx(3.0)
    several = DeviceSpec("c", "cpu", "python", 1,
                         {"dvfs": {"kind": "cgroup"}, "power": {"idle_w": 1, "active_w": [5, 3]}})
    with pytest.raises(ValueError, match='active_w is one value'):
        power_model_of(several)
    assumed, note = power_model_of(DeviceSpec("d", "cpu", "python", 1, {"dvfs": {"kind": "cgroup", "levels": 2}}))
    assert assumed.active_w == (6.0, 2.25) and "per bandwidth level" in note


def test_no_cpu_hierarchy_gives_a_none_actuator_with_the_reason(tree):
    """A box with no cgroup cpu controller: the device gets a NoneActuator, listed with why."""
    tree.write("proc/self/mounts", "sysfs /sys sysfs rw 0 0")
    tree.write("proc/self/cgroup", "0::/")
    actuators, skipped = detect_actuators([_dev()], tree.root)
    assert actuators["cpu0"].kind == "none"
    assert "no cgroup hierarchy with the cpu controller" in actuators["cpu0"].reason
    assert [u.what for u in skipped] == ["dvfs for cpu0"]


def _detect_unprivileged(root: str) -> tuple[str, str]:
    actuator = detect_actuators([_dev()], Path(root))[0]["cpu0"]
    return actuator.kind, actuator.reason


def test_without_permission_the_group_is_not_made_and_dvfs_is_off():
    """A non-root process cannot make the group: the actuator is none, the reason says it needs root or delegation."""
    with shared_tempdir() as root:
        v1_tree(SysfsTree(root))
        kind, reason = run_unprivileged(_detect_unprivileged, str(root))
        assert not list((root / V1_MOUNT / "docker/abc").glob("heddle-*"))
    assert kind == "none"
    assert "permission denied (needs root or a delegated cgroup)" in reason
    assert "CPU bandwidth control is off for cpu0" in reason


def _set_level_after_losing_write_access(root: str) -> tuple[str, str, str]:
    registry = CgroupRegistry(Path(root))
    group = registry.group(_dev())
    actuator = CgroupActuator(_dev(), registry, group)
    (group.path / "cpu.cfs_quota_us").chmod(0o444)  # as a kernel refusing the write would
    result = actuator.set_level(1)
    return type(result).__name__, result.reason, actuator.kind


def test_a_refused_quota_write_is_no_permission():
    """A quota write the kernel refuses gives NoPermission naming the file; the actuator turns off, serving goes on."""
    with shared_tempdir() as root:
        v1_tree(SysfsTree(root)).chmod(0o777)  # a delegated parent: the group can be made, not capped
        name, reason, kind = run_unprivileged(_set_level_after_losing_write_access, str(root))
    assert (name, kind) == ("NoPermission", "none")
    assert "cpu.cfs_quota_us: permission denied" in reason and "DVFS is off for cpu0" in reason


def test_level_clocks_default_to_the_bandwidth_shares():
    """Without a declared speed.level_clock, a cgroup device's levels run at their shares' speed (the scheduler's
    estimates and the controller's "lowering slows the top class" use it); a declared one is kept."""
    assert with_bandwidth_clocks(_dev(values=[100, 50, 10])).options["speed"]["level_clock"] == [1.0, 0.5, 0.1]
    declared = DeviceSpec("e", "cpu", "python", 1, {"dvfs": {"kind": "cgroup"}, "speed": {"level_clock": [1.0, 0.9]}})
    assert with_bandwidth_clocks(declared) is declared
    plain = DeviceSpec("f", "cpu", "python", 1, {"dvfs": {"kind": "virtual"}})
    assert with_bandwidth_clocks(plain) is plain


def test_an_inline_model_on_a_cgroup_device_is_a_config_error():
    """inline = true would run the stage on the event loop, outside the device's cgroup: refused, naming both."""
    from server_fixtures import parse_test_config, py_model_toml

    from heddle.server.config.load import ConfigError

    device = '[[devices]]\nid = "py0"\nkind = "cpu"\nbackend = "python"\ndvfs = { kind = "cgroup" }\n\n'
    model = py_model_toml("tail", "stage_fns:tail", devices=["py0"], inline=True)
    with pytest.raises(ConfigError, match=r"inline = true runs the stage on the event loop, outside .*\['py0'\]"):
        parse_test_config(device + model)
    assert parse_test_config(device + py_model_toml("tail", "stage_fns:tail", devices=["py0"])).devices
