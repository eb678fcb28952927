"""The benchmark suite's parts and how one runs: the suite's settings per mode (default, quick),
each part's record (status, wall time, note, command), and a bench script run as a child process
with its output logged and a time limit.

Apart from run_all.py, which owns the command, the order of the parts and the policies part
(one server, every scenario and policy): this is the plumbing every part shares.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BENCH_DIR, ROOT, bench_module

__all__ = ["DEFAULT", "PARTS", "QUICK", "Part", "Settings", "exit_note", "run_logged", "run_script"]

PARTS = ("gateway", "triton", "policies", "sched", "tiny", "perf", "live", "power")


@dataclass(frozen=True, slots=True)
class Settings:
    """What a mode passes to each part."""

    mode: str
    gateway_args: tuple[str, ...]
    triton_args: tuple[str, ...]
    duration_s: float  # of each `heddle bench` run in the policies part
    drain_s: float  # how long a bench run waits for late replies before cancelling them
    gateway_timeout_s: float
    triton_timeout_s: float
    live_args: tuple[str, ...] = ("--seeds", "3", "--duration-s", "60", "--rounds", "3")
    live_timeout_s: float = 3600.0
    power_args: tuple[str, ...] = ("--seeds", "3", "--duration-s", "60")


DEFAULT = Settings("default", (), (), 10.0, 5.0, 420.0, 480.0)
QUICK = Settings("quick", ("--requests", "500", "--warmup", "50"),
                 ("--concurrency", "1", "--concurrency", "4", "--duration-s", "3", "--warmup-s", "1"),
                 4.0, 3.0, 240.0, 300.0,
                 ("--seeds", "1", "--duration-s", "12", "--rounds", "2", "--profile-load-s", "5"), 900.0,
                 ("--seeds", "1", "--duration-s", "12"))


@dataclass(slots=True)
class Part:
    status: str = "not selected"  # ok | failed | skipped | interrupted | not selected
    wall_s: float | None = None
    note: str = ""
    command: str = ""


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, *, echo: bool) -> int:
    """Run cmd from the repo root, output to log_path (and indented to stdout with echo);
    killed after timeout_s. Returns the exit status (negative: killed by that signal)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT, errors="replace")
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if echo:
                    print("    " + line, end="", flush=True)
            return proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # Ctrl-C while reading: the child got it too; let it finish
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def exit_note(rc: int, timeout_s: float) -> str:
    return f"killed after {timeout_s:.0f} s" if rc < 0 else f"exit status {rc}"


def run_script(script: str, json_name: str, extra: tuple[str, ...], out: Path, timeout_s: float,
               part: Part) -> None:
    """A bench script as a subprocess writing its JSON into out; fills in `part`."""
    path = BENCH_DIR / script
    if not path.exists():
        part.status, part.note = "skipped", f"bench/{script} is not in this checkout"
        return
    (out / json_name).unlink(missing_ok=True)  # never summarise an earlier run's file as this one's
    cmd = bench_module(path.stem, *extra, "--out", str(out / json_name))
    part.command = shlex.join(cmd)
    rc = run_logged(cmd, out / "logs" / f"{path.stem}.log", timeout_s, echo=True)
    part.status = "ok" if rc == 0 else "failed"
    if rc != 0:
        written = "; its JSON was written" if (out / json_name).exists() else ""
        part.note = f"{exit_note(rc, timeout_s)}{written} (log: logs/{path.stem}.log)"
