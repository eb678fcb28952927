"""CPU bandwidth cgroups for threads of this process: the v1 `cpu` controller, or v2 threaded cgroups.

A device's group is `heddle-<pid>-<device>` under this process's own cgroup in the cpu
hierarchy (read from /proc/self/cgroup), so a container given a delegated cgroup can use it.
Threads join by TID (v1 `tasks`, v2 `cgroup.threads`); threads they start later (ONNX
Runtime's intra-op pool) are born in the same group. The cap is CFS bandwidth:
quota per period (v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, v2 `cpu.max`).
Sources: Linux Documentation/scheduler/sched-bwc.rst, Documentation/admin-guide/cgroup-v2.rst
("Threads", "cpu.max"), Documentation/admin-guide/cgroup-v1/cgroups.rst ("tasks").
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupError", "CpuGroup", "Hierarchy", "PREFIX", "find_hierarchy", "group_name", "remove_stale"]

PREFIX = "heddle-"
_OWNED = re.compile(r"heddle-(\d+)-.+")
# The kernel refuses a quota below 1 ms (sched-bwc.rst: "the minimum quota allowed for the quota or period is 1ms").
MIN_QUOTA_US = 1000
# Refusals that a root-less or read-only-mounted process gets; anything else is a failure.
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class CgroupError(Exception):
    """A cgroup operation failed; `permission` when the kernel refused it (no root, no delegation)."""

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where heddle's groups go: `parent` is this process's own cgroup in the hierarchy with `cpu`."""

    version: int  # 1: the v1 cpu controller; 2: the unified hierarchy (threaded cgroups)
    parent: Path

    @property
    def threads_file(self) -> str:
        return "tasks" if self.version == 1 else "cgroup.threads"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror or exc}",
                          permission=exc.errno in _PERMISSION) from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        permission = exc.errno in _PERMISSION
        why = "permission denied (needs root or a delegated cgroup)" if permission else (exc.strerror or str(exc))
        raise CgroupError(f"cannot write {value.strip()!r} to {path}: {why}", permission=permission) from None


def _own_paths(root: Path) -> dict[str, str]:
    """This process's cgroup per controller list ("cpu,cpuacct", "" for v2) from /proc/self/cgroup."""
    paths = {}
    for line in _read(root / "proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def find_hierarchy(root: Path = Path("/")) -> Hierarchy:
    """The v1 `cpu` controller's mount if there is one, else a v2 mount offering `cpu`; CgroupError says why not."""
    mounts = [line.split() for line in _read(root / "proc/self/mounts").splitlines()]
    own = _own_paths(root)
    for fields in mounts:
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            controllers = next((c for c in own if "cpu" in c.split(",")), None)
            if controllers is None:
                raise CgroupError("/proc/self/cgroup names no cgroup for the v1 cpu controller")
            return Hierarchy(1, root / fields[1].lstrip("/") / own[controllers].lstrip("/"))
    for fields in mounts:
        if len(fields) >= 3 and fields[2] == "cgroup2":
            mount = root / fields[1].lstrip("/")
            if "cpu" in _read(mount / "cgroup.controllers").split() and "" in own:
                return Hierarchy(2, mount / own[""].lstrip("/"))
    raise CgroupError("no cgroup hierarchy with the cpu controller is mounted "
                      "(v1: a `cgroup` mount with the cpu option; v2: cgroup2 listing cpu in cgroup.controllers)")


def group_name(device: str, pid: int | None = None) -> str:
    """`heddle-<pid>-<device>`: the pid tells a later start which groups belong to a dead process."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-{device}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def _move_threads(hierarchy: Hierarchy, group: Path) -> None:
    """Every thread still in `group` back to the parent, so the group can be removed."""
    target = hierarchy.parent / hierarchy.threads_file
    for tid in _read(group / hierarchy.threads_file).split():
        try:
            _write(target, tid)
        except CgroupError as exc:
            if exc.permission:
                raise
            # ESRCH: the thread ended between the read and the write; nothing to move


def remove_stale(hierarchy: Hierarchy) -> list[str]:
    """Remove heddle groups left by processes that are gone (a crash, a kill -9): their threads, if
    any, go back to the parent first. Groups of live processes, this one included, stay: another
    heddle may be running beside this one. Returns the names removed."""
    removed = []
    for path in sorted(hierarchy.parent.glob(f"{PREFIX}*")):
        match = _OWNED.fullmatch(path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(1))):
            continue
        _move_threads(hierarchy, path)
        try:
            path.rmdir()
        except OSError as exc:
            raise CgroupError(f"cannot remove stale {path}: {exc.strerror or exc}",
                              permission=exc.errno in _PERMISSION) from None
        removed.append(path.name)
    return removed


class CpuGroup:
    """One device's cgroup: threads join it, `set_fraction` caps the CPU time they get together.

    `cpus` is the device's full share in CPUs (the cores its threads can use at once), so a
    fraction f lets the group run f x cpus x period of CPU time per period."""

    def __init__(self, hierarchy: Hierarchy, device: str, cpus: float, period_us: int) -> None:
        self.hierarchy = hierarchy
        self.device = device
        self.cpus = cpus
        self.period_us = period_us
        self.path = hierarchy.parent / group_name(device)
        self.fraction = 1.0

    def create(self) -> None:
        """Make the group (a threaded one under v2) with no cap; CgroupError says why not."""
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as exc:
            permission = exc.errno in _PERMISSION
            why = "permission denied (needs root or a delegated cgroup)" if permission else (exc.strerror or str(exc))
            raise CgroupError(f"cannot create {self.path}: {why}", permission=permission) from None
        if self.hierarchy.version == 2:
            # Threads of one process may sit in different cgroups only inside a threaded subtree;
            # the parent turns "domain threaded" and then may enable the (threaded) cpu controller.
            _write(self.path / "cgroup.type", "threaded")
            _write(self.hierarchy.parent / "cgroup.subtree_control", "+cpu")
        else:
            _write(self.path / "cpu.cfs_period_us", str(self.period_us))
        self.set_fraction(1.0)

    def add_thread(self, tid: int) -> None:
        """Move one thread (a TID, threading.get_native_id()) into the group."""
        _write(self.path / self.hierarchy.threads_file, str(tid))

    def threads(self) -> set[int]:
        """The TIDs in the group now."""
        return {int(t) for t in _read(self.path / self.hierarchy.threads_file).split()}

    def quota_us(self, fraction: float) -> int | None:
        """The quota for a fraction of the device's share; None is no cap."""
        if fraction >= 1.0:
            return None
        return max(MIN_QUOTA_US, round(fraction * self.cpus * self.period_us))

    def set_fraction(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"bandwidth fraction must be in (0, 1], got {fraction}")
        quota = self.quota_us(fraction)
        if self.hierarchy.version == 1:
            _write(self.path / "cpu.cfs_quota_us", str(-1 if quota is None else quota))
        else:
            _write(self.path / "cpu.max", f"{'max' if quota is None else quota} {self.period_us}")
        self.fraction = fraction

    def remove(self) -> None:
        """Threads back to the parent, then the group goes; a group already gone is fine."""
        if not self.path.is_dir():
            return
        _move_threads(self.hierarchy, self.path)
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CgroupError(f"cannot remove {self.path}: {exc.strerror or exc}",
                              permission=exc.errno in _PERMISSION) from None
