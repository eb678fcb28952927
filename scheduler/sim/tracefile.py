"""Trace and profile files as data: the JSON-lines trace a live server records (server/runtime/trace.py)
and the run-time table `heddle profile` writes, parsed for the replay. Pure: text in, data out."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.sim.workload import PipelineDef, StageDef
from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "PROFILE_FORMAT", "TRACE_FORMAT", "EndRecord", "MeasuredProfile", "StageRecord", "Trace", "TraceArrival",
    "TraceError", "parse_profile", "parse_trace", "percentile",
]

TRACE_FORMAT = "heddle-trace/1"
PROFILE_FORMAT = "heddle-profile/1"
# Device options that change where a model may run; the rest (threads, providers) do not matter here.
_SCHEDULING_OPTIONS = ("unsupported_ops", "supported_ops")


class TraceError(ValueError):
    """A trace or profile that cannot be replayed; the message says which line or entry."""


@dataclass(frozen=True, slots=True)
class TraceArrival:
    time_s: float  # since the trace started, on the server's clock
    request_id: str
    pipeline: str
    priority: int
    deadline_s: float | None  # relative to time_s
    shapes: Mapping[str, tuple[int, ...]]  # the request's input shapes
    policy: str  # the live policy when it arrived


@dataclass(frozen=True, slots=True)
class StageRecord:
    """A stage run the live server finished: run_s is dispatch to completion as its scheduler
    saw it (the device's compute plus the hand-offs), compute_s the backend's alone."""

    time_s: float
    request_id: str
    stage: str
    model: str
    device: str
    run_s: float
    compute_s: float
    rows: int = 1  # of the batch's pass it ran in (dynamic batching); run_s is that pass's
    pass_owner: bool = True  # False for a batch's other members: the same pass again


@dataclass(frozen=True, slots=True)
class EndRecord:
    time_s: float
    request_id: str
    outcome: str  # an Outcome value
    latency_s: float
    deadline_missed: bool


@dataclass(frozen=True, slots=True)
class Trace:
    pipelines: Mapping[str, PipelineDef]
    devices: tuple[DeviceSpec, ...]
    arrivals: tuple[TraceArrival, ...]
    stage_runs: tuple[StageRecord, ...] = ()
    ends: Mapping[str, EndRecord] = field(default_factory=dict)
    started_unix_s: float | None = None  # identifies the server run that wrote it
    batching: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # model -> its batching options
    # device -> (share of its CPUs at level 0, CFS period in s): devices under a CPU-bandwidth cap
    # (`dvfs = { kind = "cgroup" }`), whose short runs wait for the next period once the quota is spent.
    bandwidth: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def segment(self, policy: str) -> Trace:
        """Only the requests that arrived while the live server ran `policy`."""
        arrivals = tuple(a for a in self.arrivals if a.policy == policy)
        ids = {a.request_id for a in arrivals}
        return replace(self, arrivals=arrivals, stage_runs=tuple(r for r in self.stage_runs if r.request_id in ids),
                       ends={k: v for k, v in self.ends.items() if k in ids})


@dataclass(frozen=True, slots=True)
class MeasuredProfile:
    """A `heddle profile` table: per (model, device, level) the figures and the measured runs."""

    devices: tuple[DeviceSpec, ...]
    entries: Mapping[tuple[str, str, int], ProfileEntry]
    samples: Mapping[tuple[str, str, int], tuple[float, ...]]  # sorted run times, seconds
    ops: Mapping[str, frozenset[str]]
    # From a trace (`heddle profile --from-trace`): when each run was dispatched, on the trace's
    # clock, and that run's time, in time order; and which server run the trace came from.
    timed: Mapping[tuple[str, str, int], tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    trace_started_unix_s: float | None = None
    # Per device, the live scheduler's reaction time (see dispatch_gaps); 0 where not measured.
    dispatch_gap_s: Mapping[str, float] = field(default_factory=dict)
    # (model, device) -> {rows: pass time / one-row time} from `heddle profile --batch` (level 0).
    batch_curves: Mapping[tuple[str, str], Mapping[int, float]] = field(default_factory=dict)
    # A profile measured under load (`--under-load S`): the seconds of load its runs came from.
    window_s: float | None = None

    def table(self) -> ProfileTable:
        """The ProfileTable the core plans with: the entries, refined online as runs finish."""
        return ProfileTable(table=dict(self.entries), ops=dict(self.ops), batch_curves=dict(self.batch_curves))


def _bandwidth(raw: Mapping[str, Any]) -> tuple[float, float] | None:
    """(level-0 share, period s) of a device whose options opt in to CPU-bandwidth control, else None."""
    dvfs = (raw.get("options") or {}).get("dvfs")
    if not isinstance(dvfs, Mapping) or dvfs.get("kind") != "cgroup":
        return None
    values = dvfs.get("values") or [100]
    return max(float(v) for v in values) / 100, float(dvfs.get("period_us", 10_000)) / 1e6


def _device(raw: Mapping[str, Any]) -> DeviceSpec:
    options = {k: tuple(v) for k, v in (raw.get("options") or {}).items() if k in _SCHEDULING_OPTIONS}
    return DeviceSpec(str(raw["id"]), str(raw.get("kind", "cpu")), str(raw.get("backend", "sim")),
                      int(raw.get("slots", 1)), options)


def _stage(raw: Mapping[str, Any]) -> StageDef:
    """A header's stage: a map stage's source and map_batch, a conditional one's `when` (fan-out, #14)."""
    return StageDef(raw["name"], raw["model"], tuple(raw["after"]), map_over=str(raw.get("map", "")),
                    map_batch=int(raw.get("map_batch", 1)), when=str(raw.get("when", "")))


def parse_trace(text: str) -> Trace:
    """A JSON-lines trace: a header (pipelines, devices, policy), then arrival and policy events."""
    pipelines: dict[str, PipelineDef] = {}
    started_unix_s = None
    devices: tuple[DeviceSpec, ...] = ()
    bandwidth: dict[str, tuple[float, float]] = {}
    arrivals: list[TraceArrival] = []
    stage_runs: list[StageRecord] = []
    ends: dict[str, EndRecord] = {}
    policy = ""
    batching: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            kind = event["event"]
            if kind == "header":
                if event.get("format") != TRACE_FORMAT:
                    raise TraceError(f"line {number}: format {event.get('format')!r}, expected {TRACE_FORMAT!r}")
                policy = event.get("policy", "")
                started_unix_s = event.get("started_unix_s")
                batching = {str(m): dict(o) for m, o in (event.get("models") or {}).items()}
                devices = tuple(_device(d) for d in event["devices"])
                bandwidth = {str(d["id"]): b for d in event["devices"] if (b := _bandwidth(d)) is not None}
                for name, p in event["pipelines"].items():
                    pipelines[name] = PipelineDef(name, tuple(_stage(s) for s in p["stages"]))
            elif kind == "policy":
                policy = event["policy"]
            elif kind == "arrival":
                deadline = event.get("deadline_s")
                arrivals.append(TraceArrival(
                    float(event["t_s"]), str(event["request_id"]), str(event["pipeline"]), int(event["priority"]),
                    None if deadline is None else float(deadline),
                    {k: tuple(v) for k, v in (event.get("shapes") or {}).items()}, policy))
            elif kind == "stage" and event.get("status", "OK") == "OK":
                stage_runs.append(StageRecord(float(event["t_s"]), str(event["request_id"]), str(event["stage"]),
                                              str(event["model"]), str(event["device"]), float(event["run_s"]),
                                              float(event.get("compute_s", event["run_s"])),
                                              int(event.get("rows", 1)), bool(event.get("pass_owner", True))))
            elif kind == "end":
                ends[str(event["request_id"])] = EndRecord(float(event["t_s"]), str(event["request_id"]),
                                                           str(event["outcome"]), float(event["latency_s"]),
                                                           bool(event.get("deadline_missed", False)))
        except TraceError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"trace line {number}: {type(exc).__name__}: {exc}") from None
    if not pipelines:
        raise TraceError("trace has no header line (pipelines and devices)")
    unknown = sorted({a.pipeline for a in arrivals} - set(pipelines))
    if unknown:
        raise TraceError(f"trace arrivals name pipelines its header lacks: {unknown}")
    return Trace(pipelines, devices, tuple(sorted(arrivals, key=lambda a: a.time_s)), tuple(stage_runs), ends,
                 started_unix_s, batching, bandwidth)


def parse_profile(doc: Mapping[str, Any]) -> MeasuredProfile:
    """A parsed `heddle profile` file (JSON or TOML, same structure)."""
    if doc.get("format") != PROFILE_FORMAT:
        raise TraceError(f"profile format {doc.get('format')!r}, expected {PROFILE_FORMAT!r}")
    entries, samples, timed = {}, {}, {}
    batched: dict[tuple[str, str], dict[int, float]] = {}
    try:
        for e in doc["entries"]:
            key = (str(e["model"]), str(e["device"]), int(e.get("level", 0)))
            rows = int(e.get("batch", 1))
            if rows > 1:  # a pass of `rows` rows: a point on the batch curve, not a run time of its own
                if key[2] == 0:
                    batched.setdefault(key[:2], {})[rows] = float(e["latency_s"])
                continue
            entries[key] = ProfileEntry(float(e["latency_s"]), float(e.get("power_w", 0.0)),
                                        float(e["tail_s"]) if "tail_s" in e else None)
            runs = [float(s) for s in e.get("samples_s", ())]
            samples[key] = tuple(sorted(runs))
            if "sample_t_s" in e:
                pairs = sorted(zip((float(t) for t in e["sample_t_s"]), runs, strict=True))
                timed[key] = (tuple(t for t, _ in pairs), tuple(r for _, r in pairs))
        devices = tuple(_device(d) for d in doc["devices"])
        ops = {m: frozenset(info.get("op_types", ())) for m, info in (doc.get("models") or {}).items()}
        gaps = {str(d): float(g) for d, g in (doc.get("dispatch_gap_s") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TraceError(f"profile entry: {type(exc).__name__}: {exc}") from None
    one_row = {k: entries[(k[0], k[1], 0)].latency_s for k in batched if (k[0], k[1], 0) in entries}
    curves = {k: {rows: t / one_row[k] for rows, t in sorted(points.items())}
              for k, points in batched.items() if one_row.get(k, 0.0) > 0}
    window = doc.get("duration_s") if doc.get("method") == "under_load" else None
    return MeasuredProfile(devices, entries, samples, ops, timed, doc.get("trace_started_unix_s"), gaps, curves,
                           None if window is None else float(window))


def dispatch_gaps(trace: Trace, min_runs: int = 3) -> dict[str, float]:
    """Per device, the median time from the moment a run could have started (it was ready and
    a slot of its device was free, from then on) to its dispatch.

    That is the live scheduler's reaction time (the event loop getting to a completion or an
    arrival, then the scheduling pass itself), which a virtual clock does not have: about
    0.3-0.5 ms per stage on the 2-core box, more than a small model's run. The replay adds it to
    each run's time.
    """
    arrived = {a.request_id: a for a in trace.arrivals}
    ends = {(r.request_id, r.stage): r.time_s for r in trace.stage_runs}
    slots = {d.id: d.slots for d in trace.devices}
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in trace.stage_runs:
        by_device.setdefault(r.device, []).append((r.time_s - r.run_s, r.time_s))
    index = {d: _RunIndex(runs) for d, runs in by_device.items()}
    gaps: dict[str, list[float]] = {}
    for r in trace.stage_runs:
        ready = _ready_s(trace, arrived.get(r.request_id), r, ends)
        start = r.time_s - r.run_s
        if ready is None or start < ready:
            continue
        free_since = index[r.device].free_since(ready, (start, r.time_s), slots.get(r.device, 1))
        if free_since is not None:
            gaps.setdefault(r.device, []).append(start - free_since)
    return {d: sorted(g)[len(g) // 2] for d, g in sorted(gaps.items()) if len(g) >= min_runs}


def _ready_s(trace: Trace, arrival: TraceArrival | None, run: StageRecord,
             ends: Mapping[tuple[str, str], float]) -> float | None:
    """When the run's inputs existed: its request's arrival or its last upstream stage's end."""
    pipeline = trace.pipelines.get(arrival.pipeline) if arrival else None
    stage = next((s for s in pipeline.stages if s.name == run.stage), None) if pipeline else None
    if stage is None or arrival is None:
        return None
    upstream = [ends.get((run.request_id, u)) for u in stage.after]
    ended = [t for t in upstream if t is not None]
    return None if len(ended) < len(upstream) else max([arrival.time_s, *ended])


class _RunIndex:
    """A device's recorded runs, to ask how many were running at a moment."""

    def __init__(self, runs: list[tuple[float, float]]) -> None:
        self.runs = sorted(runs)
        self.starts = [s for s, _ in self.runs]
        self.ends = sorted(e for _, e in runs)
        self.longest = max(e - s for s, e in runs)

    def running(self, t: float, own: tuple[float, float]) -> int:
        """Runs going on at t, the run `own` (its start, end) not counted."""
        lo = bisect.bisect_left(self.starts, t - self.longest)
        hi = bisect.bisect_right(self.starts, t)
        return sum(1 for s, e in self.runs[lo:hi] if e > t) - (own[0] <= t < own[1])

    def free_since(self, ready: float, own: tuple[float, float], slots: int) -> float | None:
        """The last moment in [ready, start] at which a slot was free (ready itself, or a run's
        end), or None if no slot was free at any of them: then the wait was queueing."""
        lo, hi = bisect.bisect_left(self.ends, ready), bisect.bisect_right(self.ends, own[0])
        for t in [*reversed(self.ends[lo:hi]), ready]:
            if self.running(t, own) < slots:
                return t
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the simulator's definition (NaN for no values)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]
