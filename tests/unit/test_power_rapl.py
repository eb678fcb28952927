"""RAPL powercap energy counters read from temporary sysfs-shaped trees: deltas, wraparound, permissions."""

from __future__ import annotations

import pytest

from heddle.backends.power.rapl import RaplSensor, detect_rapl, discover_zones, energy_delta_uj
from heddle.backends.power.sensors import BOARD, MEASURED, detect_sensors
from heddle.backends.power.testing import SysfsTree, run_unprivileged, shared_tempdir
from heddle.scheduler.specs import DeviceSpec

ZONE0 = "sys/class/powercap/intel-rapl:0"


def _cpu(id_: str, cores=None, **options) -> DeviceSpec:
    if cores is not None:
        options["cpu_affinity"] = cores
    return DeviceSpec(id_, "cpu", "onnxruntime", 1, options)


@pytest.fixture
def tree(tmp_path):
    return SysfsTree(tmp_path)


def test_power_comes_from_energy_deltas(tree):
    """The first read primes the counter; the next gives delta joules over delta seconds, energy accumulating."""
    tree.rapl_zone(0, "package-0", energy_uj=1_000_000)
    [sensor], skipped = detect_rapl([_cpu("cpu0"), _cpu("cpu1")], tree.root)
    assert skipped == []
    assert sensor.read(100.0) == []
    tree.write(f"{ZONE0}/energy_uj", 6_000_000)
    [sample] = sensor.read(100.5)
    assert (sample.device, sample.power_w, sample.energy_j, sample.source, sample.sensor, sample.t_s) == (
        "cpu0+cpu1", 10.0, 5.0, MEASURED, "rapl:package-0", 100.5)
    tree.write(f"{ZONE0}/energy_uj", 7_000_000)
    [sample] = sensor.read(101.0)
    assert (sample.power_w, sample.energy_j) == (2.0, 6.0)


def test_counter_wraparound_is_undone(tree):
    """A counter that passed max_energy_range_uj and restarted near zero still gives the true delta."""
    tree.rapl_zone(0, "package-0", energy_uj=999_000_000, max_range_uj=1_000_000_000)
    [sensor], _ = detect_rapl([_cpu("cpu0")], tree.root)
    sensor.read(0.0)
    tree.write(f"{ZONE0}/energy_uj", 2_000_000)
    [sample] = sensor.read(1.0)
    assert (sample.power_w, sample.energy_j) == (3.0, 3.0)
    assert energy_delta_uj(10, 25, 100) == 15
    assert energy_delta_uj(90, 5, 100) == 15


def test_subzones_are_skipped_and_psys_is_the_board(tree):
    """Only top-level zones are read (core/uncore are inside their package); psys is the whole platform."""
    tree.rapl_zone(0, "package-0", energy_uj=0)
    tree.rapl_zone(1, "psys", energy_uj=0, subzones=())
    zones, _ = discover_zones(tree.root)
    assert [z.path.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]
    [sensor], _ = detect_rapl([_cpu("cpu0")], tree.root)
    assert [z.domain for z in sensor.zones] == ["cpu0", BOARD]


def test_two_packages_map_pinned_devices_by_topology(tree):
    """With two sockets each pinned device gets its socket's package; an unpinned one cannot be placed."""
    tree.rapl_zone(0, "package-0", energy_uj=0)
    tree.rapl_zone(1, "package-1", energy_uj=0)
    for cpu, package in ((0, 0), (1, 0), (2, 1), (3, 1)):
        tree.cpu_package(cpu, package)
    [sensor], skipped = detect_rapl([_cpu("a", [0, 1]), _cpu("b", [2]), _cpu("c", [1, 2]), _cpu("d")], tree.root)
    assert [z.domain for z in sensor.zones] == ["a", "b"]
    assert sorted(u.what for u in skipped) == ["rapl for c", "rapl for d"]
    assert sensor.devices == ("a", "b")


def test_unreadable_counter_at_read_time_leaves_the_zone_out(tree):
    """A counter that cannot be read any more gives no sample and records why; read() does not raise."""
    tree.rapl_zone(0, "package-0", energy_uj=0)
    [sensor], _ = detect_rapl([_cpu("cpu0")], tree.root)
    sensor.read(0.0)
    (tree.root / ZONE0 / "energy_uj").unlink()
    assert sensor.read(1.0) == []
    assert "energy_uj" in sensor.last_error


def test_same_instant_twice_gives_no_power(tree):
    """Two reads at the same now_s count the energy but cannot give a power (no division by zero)."""
    tree.rapl_zone(0, "package-0", energy_uj=0)
    sensor = RaplSensor(discover_zones(tree.root)[0])
    sensor.read(5.0)
    tree.write(f"{ZONE0}/energy_uj", 1_000_000)
    assert sensor.read(5.0) == []
    tree.write(f"{ZONE0}/energy_uj", 3_000_000)
    [sample] = sensor.read(6.0)
    assert (sample.power_w, sample.energy_j) == (2.0, 3.0)


def _detect_reasons(root: str) -> list[tuple[str, str]]:
    from pathlib import Path

    sensors, skipped = detect_rapl([_cpu("cpu0")], Path(root))
    return [(s.name, "") for s in sensors] + [(u.what, u.reason) for u in skipped]


def test_root_only_counter_is_unavailable_with_the_reason():
    """energy_uj readable by root only (Linux >= 5.10) makes RAPL unavailable, saying why and what to do."""
    with shared_tempdir() as root:
        tree = SysfsTree(root)
        tree.rapl_zone(0, "package-0", energy_uj=123)
        (root / ZONE0 / "energy_uj").chmod(0o000)  # unreadable to anyone but root, whoever runs the tests
        reasons = run_unprivileged(_detect_reasons, str(root))
    [(what, reason)] = reasons
    assert what == "rapl intel-rapl:0"
    assert "energy_uj: permission denied" in reason and "CVE-2020-8694" in reason


def test_no_powercap_here_falls_back_to_the_estimate(tree):
    """Without powercap zones a CPU device is estimated and the reason names the missing directory."""
    sensors, skipped = detect_sensors([_cpu("cpu0", power={"idle_w": 1.0, "active_w": [5.0]})], tree.root,
                                      busy_fraction=lambda d: 0.5)
    assert [s.name for s in sensors] == ["estimate"]
    assert sensors[0].read(0.0)[0].power_w == 3.0
    assert any(u.what == "rapl" and "intel-rapl" in u.reason for u in skipped)


def test_package_of_estimated_cpus_is_not_read(tree):
    """A package whose CPU devices all chose the estimate is left out, so the box total does not count it twice."""
    tree.rapl_zone(0, "package-0", energy_uj=0)
    tree.rapl_zone(1, "psys", energy_uj=0, subzones=())
    sensors, _ = detect_sensors([_cpu("cpu0", sensor={"kind": "estimate"})], tree.root, busy_fraction=lambda d: 0.0)
    assert [s.name for s in sensors] == ["rapl", "estimate"]
    assert [z.name for z in sensors[0].zones] == ["psys"]
