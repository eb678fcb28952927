"""`heddle simulate`'s files: a workload and a platform as TOML in, per-request records (JSON lines
or CSV) out. The parsing itself is pure and lives in scheduler/sim/{workload,platform}_file.py."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tomllib

from heddle.scheduler.sim.platform_file import parse_platform
from heddle.scheduler.sim.platforms import PLATFORMS, Platform
from heddle.scheduler.sim.scoring import RequestRecord
from heddle.scheduler.sim.workload import Scenario
from heddle.scheduler.sim.workload_file import parse_workload
from heddle.scheduler.state import Outcome

__all__ = ["RECORD_FIELDS", "load_platform", "load_workload", "record_rows", "write_records"]

RECORD_FIELDS = ("policy", "seed", "request_id", "source", "priority", "arrival_s", "deadline_s", "finish_s",
                 "latency_ms", "isolated_ms", "outcome", "violated")


def _toml(path: str | Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} file {path}: not valid TOML: {exc}") from None


def load_platform(name_or_path: str) -> Platform:
    """A shipped platform by name, or a platform TOML file by path."""
    if name_or_path in PLATFORMS:
        return PLATFORMS[name_or_path]
    if not (name_or_path.endswith(".toml") or Path(name_or_path).exists()):
        raise ValueError(f"unknown platform {name_or_path!r}: give a .toml file or one of {sorted(PLATFORMS)}")
    return parse_platform(_toml(name_or_path, "platform"), str(name_or_path))


def load_workload(path: str | Path, platform: Platform) -> Scenario:
    """A workload TOML file, its models checked against the platform's."""
    return parse_workload(_toml(path, "workload"), list(platform.models), str(path))


def record_rows(policy: str, seed: int, records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """One flat row per request: times in seconds from the start, latencies in ms (empty where
    the request did not complete), the outcome and whether its deadline was violated."""
    rows = []
    for r in records:
        done = r.finish_s is not None and r.outcome == Outcome.OK.value
        rows.append({"policy": policy, "seed": seed, "request_id": r.request_id, "source": r.source,
                     "priority": r.priority, "arrival_s": r.arrival_s, "deadline_s": r.deadline_s,
                     "finish_s": r.finish_s, "latency_ms": 1000 * r.latency_s if done else None,
                     "isolated_ms": 1000 * r.isolated_s, "outcome": r.outcome, "violated": r.violated})
    return rows


def write_records(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """JSON lines for a .jsonl (or any other) name, CSV for .csv; None is null / an empty cell."""
    target = Path(path)
    with target.open("w", newline="") as out:
        if target.suffix == ".csv":
            writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        else:
            for row in rows:
                out.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in row.items()}) + "\n")
