"""The CPU-bandwidth actuator on this machine's real cgroup filesystem (skipped where it is not
writable): worker and ONNX Runtime threads really inside, groups removed on close and when stale,
and a throttled device really slower."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heddle.backends.base import make_pool
from heddle.backends.onnxruntime import OrtExecutor, read_io_spec
from heddle.backends.power.cgroup import CgroupError, find_hierarchy, group_name
from heddle.backends.power.dvfs import Applied, detect_actuators
from heddle.backends.power.dvfs_cgroup import CgroupRegistry, registry_for
from heddle.backends.zoo.build import build_model
from heddle.scheduler.specs import DeviceSpec, ModelSpec

ROOT = Path("/")


def _writable_reason() -> str:
    """Empty when this process can make a cpu cgroup here, else why the live tests skip."""
    try:
        hierarchy = find_hierarchy(ROOT)
    except CgroupError as exc:
        return str(exc)
    probe = hierarchy.parent / group_name("cgtest-probe")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot make a cgroup under {hierarchy.parent}: {exc.strerror} (needs root or a delegated cgroup)"
    return ""


SKIP = _writable_reason()
pytestmark = pytest.mark.skipif(bool(SKIP), reason=SKIP)


def _device(id_: str, backend: str = "python", slots: int = 1, **options) -> DeviceSpec:
    return DeviceSpec(id_, "cpu", backend, slots, {"dvfs": {"kind": "cgroup"}, **options})


@pytest.fixture
def registry() -> Iterator[CgroupRegistry]:
    """The process's registry for "/" (the one make_pool uses); every test group goes at the end, even on failure."""
    live = registry_for(ROOT)
    yield live
    live.release_all()
    parent = find_hierarchy(ROOT).parent
    for path in parent.glob(f"{group_name('cgtest')}*"):
        for tid in (path / "tasks").read_text().split():
            (parent / "tasks").write_text(tid)
        path.rmdir()


def _tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_every_worker_thread_joins_the_device_group_and_leaves_on_close(registry):
    """Both slots' threads are in the group's tasks; closing the actuator moves them back and removes the group."""
    device = _device("cgtest-pool", slots=2)
    pool = make_pool(device)
    both = threading.Barrier(2)

    def tid() -> int:
        both.wait(timeout=30)  # two threads at once, so the pool starts both
        return threading.get_native_id()

    try:
        workers = {f.result() for f in [pool.submit(tid), pool.submit(tid)]}
        actuator = detect_actuators([device], ROOT)[0][device.id]
        group = registry.group(device)
        assert len(workers) == 2 and workers <= group.threads()
        actuator.close()
        assert not group.path.exists()
        parent_tasks = {int(t) for t in (group.hierarchy.parent / "tasks").read_text().split()}
        assert workers <= parent_tasks
    finally:
        pool.shutdown()


def test_onnxruntime_intra_op_threads_are_born_in_the_group(registry, tmp_path):
    """A session made on a worker thread (as the runtime's loader does) starts its intra-op threads in the group."""
    path = build_model("cnn", tmp_path)
    inputs, outputs = read_io_spec(path)
    ex = OrtExecutor(_device("cgtest-ort", "onnxruntime", intra_op_threads=3))
    try:
        before = _tids()
        ex.pool.submit(ex.load, ModelSpec("cnn", "onnxruntime", str(path), inputs, outputs)).result()
        new = _tids() - before
        inside = registry.group(ex.device).threads()
        assert len(new) >= 3  # the worker and ORT's two intra-op threads (the caller is the third)
        assert new <= inside
    finally:
        ex.close()


def test_stale_groups_of_dead_processes_are_removed_at_start(registry):
    """A heddle group named after a pid that no longer runs is removed when the first group is made;
    one of a live process (here this one, as another heddle running beside it) stays."""
    child = subprocess.Popen(["true"])  # noqa: S603, S607  (a pid that has ended)
    child.wait()
    live = registry.group(_device("cgtest-live"))
    parent = find_hierarchy(ROOT).parent
    stale = parent / group_name("cgtest-stale", pid=child.pid)
    stale.mkdir()
    fresh = CgroupRegistry(ROOT)
    try:
        assert fresh.group(_device("cgtest-fresh")) is not None
        assert stale.name in fresh.removed_stale and not stale.exists()
        assert live is not None and live.path.is_dir() and live.path.name not in fresh.removed_stale
    finally:
        fresh.release_all()
        if stale.exists():
            stale.rmdir()


def favour(group: Path) -> None:
    """The largest CPU weight for the group: on a shared box the full-speed reference then measures
    the machine, not the neighbours' load, and only the bandwidth cap slows the group down."""
    if (group / "cpu.shares").exists():
        (group / "cpu.shares").write_text("262144")  # v1's maximum
    else:
        (group / "cpu.weight").write_text("10000")  # v2's maximum


def _burn() -> tuple[float, float]:
    """Wall and this thread's CPU seconds of a fixed CPU-bound loop."""
    wall, cpu = time.perf_counter(), time.thread_time()
    total = 0
    for i in range(1_000_000):
        total += i * i
    return time.perf_counter() - wall, time.thread_time() - cpu


@pytest.mark.slow
def test_a_cpu_bound_stage_slows_down_with_the_level(registry):
    """A CPU-bound function (~40 ms of CPU, longer than a period's quota) on the device's pool gets about
    its level's share of a CPU, and at the lowest level takes at least twice its full-speed time.
    Tolerances: the kernel enforces quotas at tick granularity, and on a loaded box the full-speed run
    gets less than a CPU even with the group's weight raised (hence the ratio at 10%, against the fastest
    full-speed run)."""
    device = _device("cgtest-speed", dvfs={"kind": "cgroup", "values": [100, 25, 10]})
    pool = make_pool(device)
    try:
        actuator = detect_actuators([device], ROOT)[0][device.id]
        favour(registry.group(device).path)
        runs = {}
        for level in (0, 1, 2):
            assert isinstance(actuator.set_level(level), Applied)
            runs[level] = [pool.submit(_burn).result() for _ in range(3)]
        share = {level: sum(c for _, c in r) / sum(w for w, _ in r) for level, r in runs.items()}
        assert share[1] <= 0.25 * 1.5, runs
        assert share[2] <= 0.10 * 2, runs
        assert statistics.median(w for w, _ in runs[2]) >= 2 * min(w for w, _ in runs[0]), runs
        actuator.close()
    finally:
        pool.shutdown()
