"""Trace replay: a live server's recorded requests, run through the scheduler core on a virtual
clock with run times measured on the same machine (`heddle profile`), under any policy.

Pure like the simulator: callers read the files and hand their text (trace) or parsed
document (profile) in; `heddle simulate --trace FILE --profile FILE --platform local`
(server/simulate_cmd.py) does so.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from heddle.scheduler.budget import critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.dag import Pipeline
from heddle.scheduler.policies import make_policy
from heddle.scheduler.sim.scoring import PolicyResult, RequestRecord, score
from heddle.scheduler.sim.tracefile import MeasuredProfile, Trace, TraceArrival, TraceError
from heddle.scheduler.sim.workload import build_pipelines
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.scheduler.state import Request

__all__ = ["closed_loop_links", "recorded", "replay"]

_MIN_LOCAL_RUNS = 5  # fewer measured runs than this near a moment: draw from all of them


@dataclass(frozen=True, slots=True)
class _Setup:
    devices: tuple[DeviceSpec, ...]
    pipelines: Mapping[str, Pipeline]
    models: Mapping[str, ModelSpec]
    isolated_s: Mapping[str, float]  # per pipeline: its critical path on the fastest devices


def _setup(trace: Trace, profile: MeasuredProfile) -> _Setup:
    if not trace.arrivals:
        raise TraceError("the trace (or the chosen segment) has no arrivals")
    devices = trace.devices or profile.devices
    names = sorted({a.pipeline for a in trace.arrivals})
    used = {s.model for name in names for s in trace.pipelines[name].stages}
    devices_of = {m: tuple(d.id for d in devices if (m, d.id, 0) in profile.entries) for m in sorted(used)}
    missing = [m for m, ds in devices_of.items() if not ds]
    if missing:
        raise TraceError(f"the profile has no figures for models {missing} on the trace's devices "
                         f"{[d.id for d in devices]}: run `heddle profile` with the server's config")
    pipelines, models = build_pipelines([trace.pipelines[n] for n in names], devices_of)
    best = {m: min(profile.entries[(m, d, 0)].latency_s for d in ds) for m, ds in devices_of.items()}
    isolated = {n: critical_path_s(p, lambda s, p=p: best[p.stage(s).model]) for n, p in pipelines.items()}
    return _Setup(devices, pipelines, models, isolated)


def closed_loop_links(trace: Trace, pipelines: Sequence[str]) -> dict[str, tuple[str, float]]:
    """For requests of closed-loop clients (a client sends its next request when its last one
    ends): request id -> (the request whose end it followed, the client's gap after that end).
    Each arrival takes the earliest recorded end not yet followed; the first ones follow none."""
    links: dict[str, tuple[str, float]] = {}
    for name in pipelines:
        ids = {a.request_id for a in trace.arrivals if a.pipeline == name}
        missing = sorted(ids - set(trace.ends))
        if missing:
            raise TraceError(f"closed-loop replay of {name!r} needs the end of every request; the trace lacks "
                             f"{len(missing)} (e.g. {missing[0]!r})")
        events = sorted([(trace.ends[i].time_s, 0, i) for i in ids] +
                        [(a.time_s, 1, a.request_id) for a in trace.arrivals if a.pipeline == name])
        free: deque[tuple[float, str]] = deque()
        for time_s, is_arrival, rid in events:
            if not is_arrival:
                free.append((time_s, rid))
            elif free:
                end_s, previous = free.popleft()
                links[rid] = (previous, time_s - end_s)
    return links


def replay(trace: Trace, profile: MeasuredProfile, policy: str, *, seed: int = 1,
           policy_options: Mapping | None = None, closed: Sequence[str] = (),
           local_window_s: float | None = None) -> PolicyResult:
    """Every request of the trace through a Core under `policy`; each run takes a time drawn from
    that (model, device)'s measured runs (the same draw for a run under every policy). Requests
    arrive at their recorded times, except those of `closed` pipelines, which arrive their
    client's recorded gap after the request they followed ends in the replay.

    local_window_s: draw from the runs recorded within that many seconds of the same moment of
    the trace (the profile must come from this trace): a machine whose speed drifts (other work,
    heat, clocks) is replayed as fast or slow as it was then."""
    setup = _setup(trace, profile)
    if local_window_s is not None and (profile.trace_started_unix_s is None
                                       or profile.trace_started_unix_s != trace.started_unix_s):
        raise TraceError("drawing run times near the same moment needs a profile made from this very trace "
                         "(heddle profile --from-trace)")
    core = Core(setup.devices, setup.models, make_policy(policy, **dict(policy_options or {})), profile.table())
    run = _Replay(core, profile, setup, f"{seed}", local_window_s, trace.arrivals[0].time_s,
                  closed_loop_links(trace, closed), {a.request_id: a for a in trace.arrivals})
    for a in trace.arrivals:
        if a.request_id not in run.links:
            run.push(a.time_s - run.t0, 0, a)
    while run.events:
        now, _, kind, item = heapq.heappop(run.events)
        if kind == 0:
            run.arrive(item, now)
        else:
            core.on_stage_done(item[0], item[1], now)
        run.carry_out(core.schedule(now), now)
    records = run.records
    assert len(records) == len(trace.arrivals) and all(r.outcome for r in records.values()), "a request never ended"
    span_s = max(trace.arrivals[-1].time_s - run.t0, 1e-9)
    result = score(policy, list(records.values()), span_s, 0.0, run.migrations, run.freezes)
    return replace(result, placements={m: dict(sorted(c.items())) for m, c in sorted(run.placements.items())})


@dataclass(slots=True)
class _Replay:
    """One replay's moving parts: the event heap, the records, and what the plans did."""

    core: Core
    profile: MeasuredProfile
    setup: _Setup
    seed: str
    local_window_s: float | None
    t0: float  # the trace time of the first arrival: the replay's 0
    links: Mapping[str, tuple[str, float]]  # closed-loop request -> (the one it followed, gap)
    arrivals: Mapping[str, TraceArrival]
    events: list = field(default_factory=list)  # (time, counter, 0 arrival | 1 stage done, item)
    records: dict[str, RequestRecord] = field(default_factory=dict)
    placements: dict[str, dict[str, int]] = field(default_factory=dict)
    counter: int = 0
    migrations: int = 0
    freezes: int = 0
    followers: dict[str, tuple[str, float]] = field(default_factory=dict)  # links, inverted

    def __post_init__(self) -> None:
        self.followers = {previous: (rid, gap_s) for rid, (previous, gap_s) in self.links.items()}

    def push(self, time_s: float, kind: int, item) -> None:
        self.counter += 1
        heapq.heappush(self.events, (time_s, self.counter, kind, item))

    def arrive(self, a: TraceArrival, now: float) -> None:
        deadline = None if a.deadline_s is None else now + a.deadline_s
        self.records[a.request_id] = RequestRecord(a.request_id, a.pipeline, a.priority, now, deadline,
                                                   self.setup.isolated_s[a.pipeline])
        self.core.submit(Request(a.request_id, self.setup.pipelines[a.pipeline], a.priority, now, deadline), now)

    def carry_out(self, plan, now: float) -> None:
        for d in plan.dispatches:
            near = None if self.local_window_s is None else (now + self.t0, self.local_window_s)
            run_s = _draw(self.profile, (d.model, d.device, self.core.level(d.device)),
                          f"{self.seed}/{d.request_id}/{d.stage}", near)
            run_s += self.profile.dispatch_gap_s.get(d.device, 0.0)  # the live loop's reaction time
            per_model = self.placements.setdefault(d.model, {})
            per_model[d.device] = per_model.get(d.device, 0) + 1
            self.push(now + run_s, 1, (d.request_id, d.stage))
        for f in plan.finished:
            record = self.records[f.request_id]
            assert not record.outcome, f"{f.request_id} ended twice"
            record.outcome, record.finish_s = f.outcome.value, now
            self.core.forget(f.request_id)
            if f.request_id in self.followers:  # its closed-loop client sends the next one
                rid, gap_s = self.followers[f.request_id]
                self.push(now + gap_s, 0, self.arrivals[rid])
        self.migrations += len(plan.migrated)
        self.freezes += len(plan.frozen)


def recorded(trace: Trace, profile: MeasuredProfile, label: str = "recorded") -> PolicyResult | None:
    """What really happened to the trace's requests (its end lines), scored like a replay: the
    live row to set beside the simulated ones. None when the trace has no end lines."""
    ended = [a for a in trace.arrivals if a.request_id in trace.ends]
    if not ended:
        return None
    setup = _setup(trace, profile)
    t0 = trace.arrivals[0].time_s
    records = []
    for a in ended:
        end = trace.ends[a.request_id]
        arrival_s = a.time_s - t0
        deadline = None if a.deadline_s is None else arrival_s + a.deadline_s
        records.append(RequestRecord(a.request_id, a.pipeline, a.priority, arrival_s, deadline,
                                     setup.isolated_s[a.pipeline], arrival_s + end.latency_s, end.outcome))
    return score(label, records, max(trace.arrivals[-1].time_s - t0, 1e-9), 0.0, 0, 0)


def _draw(profile: MeasuredProfile, key: tuple[str, str, int], run_key: str,
          near: tuple[float, float] | None) -> float:
    """A measured run time picked by a hash of the run: an empirical draw that is the same for
    a given run under every policy (common random numbers sharpen policy differences). near:
    (trace time, window) to draw only from runs dispatched around that moment."""
    measured = profile.samples.get(key) or profile.samples.get((key[0], key[1], 0))
    if not measured:
        return profile.entries[(key[0], key[1], 0)].latency_s
    timed = profile.timed.get(key)
    if near is not None and timed is not None:
        at_s, window_s = near
        lo, hi = bisect.bisect_left(timed[0], at_s - window_s), bisect.bisect_right(timed[0], at_s + window_s)
        if hi - lo >= _MIN_LOCAL_RUNS:
            measured = sorted(timed[1][lo:hi])
    digest = hashlib.blake2b(run_key.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return measured[min(int(u * len(measured)), len(measured) - 1)]
