"""Trace replay: a live server's recorded requests, run through the scheduler core on a virtual
clock with run times measured on the same machine (`heddle profile`), under any policy.

Pure like the simulator: callers read the files and hand their text (trace) or parsed
document (profile) in; `heddle simulate --trace FILE --profile FILE --platform local`
(server/tools/simulate_cmd.py) does so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from heddle.scheduler.budget import by_model, critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.dag import Pipeline
from heddle.scheduler.plan import Dispatch, Finished
from heddle.scheduler.policies import make_policy
from heddle.scheduler.sim.driver import Driver
from heddle.scheduler.sim.fanout_sim import FanoutDraws, trace_draws
from heddle.scheduler.sim.run_times import MeasuredRuns
from heddle.scheduler.sim.scoring import PolicyResult, RequestRecord, ended_records, score, sorted_placements
from heddle.scheduler.sim.tracefile import MeasuredProfile, Trace, TraceArrival, TraceError
from heddle.scheduler.sim.workload import build_pipelines
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.scheduler.state import Request

__all__ = ["ReplayLog", "closed_loop_links", "recorded", "replay"]


@dataclass(slots=True)
class ReplayLog:
    """What a replay did, run by run and request by request, on its own clock (0 = the trace's first arrival)."""

    runs: list[tuple[float, float, Dispatch]] = field(default_factory=list)  # (start_s, end_s, dispatch)
    requests: list[RequestRecord] = field(default_factory=list)

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
    # Models that batched live batch in the replay too (the profile's batch curves time their passes).
    models = {n: replace(m, options={**m.options, **trace.batching[n]}) if n in trace.batching else m
              for n, m in models.items()}
    best = {m: min(profile.entries[(m, d, 0)].latency_s for d in ds) for m, ds in devices_of.items()}
    isolated = {n: critical_path_s(p, by_model(p, best.__getitem__)) for n, p in pipelines.items()}
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
           policy_options: Mapping[str, Any] | None = None, closed: Sequence[str] = (),
           local_window_s: float | None = None, log: ReplayLog | None = None) -> PolicyResult:
    """Every request of the trace through a Core under `policy`; each run takes a time drawn from
    that (model, device)'s measured runs (run_times.MeasuredRuns). Requests arrive at their
    recorded times, except those of `closed` pipelines, which arrive their client's recorded
    gap after the request they followed ends in the replay.

    local_window_s: draw from the runs recorded within that many seconds of the same moment of
    the trace (the profile must come from this trace). log: gets every simulated run and request,
    to set beside the live ones (bench/sim_vs_live.py)."""
    setup = _setup(trace, profile)
    if local_window_s is not None and (profile.trace_started_unix_s is None
                                       or profile.trace_started_unix_s != trace.started_unix_s):
        raise TraceError("drawing run times near the same moment needs a profile made from this very trace "
                         "(heddle profile --from-trace)")
    core = Core(setup.devices, setup.models, make_policy(policy, **dict(policy_options or {})), profile.table())
    t0 = trace.arrivals[0].time_s  # the replay's 0
    links = closed_loop_links(trace, closed)
    records: dict[str, RequestRecord] = {}

    def submit(a: TraceArrival, now: float) -> Request:
        deadline = None if a.deadline_s is None else now + a.deadline_s
        records[a.request_id] = RequestRecord(a.request_id, a.pipeline, a.priority, now, deadline,
                                              setup.isolated_s[a.pipeline])
        return Request(a.request_id, setup.pipelines[a.pipeline], a.priority, now, deadline)

    runs = MeasuredRuns(profile, seed, local_window_s, t0)
    # Map stages' element counts and `when` outcomes as the live server had them, per request.
    draws = FanoutDraws(runs, *trace_draws((r.request_id, r.stage) for r in trace.stage_runs))
    driver = Driver(core, draws, make_request=submit, log_runs=log is not None)
    driver.on_finished = _closed_loop_clients(trace, links, driver)
    for a in trace.arrivals:
        if a.request_id not in links:
            driver.arrive(a.time_s - t0, a)
    driver.run()
    ended = ended_records(records, driver.finished)
    if log is not None:
        log.runs.extend(driver.runs)
        log.requests.extend(ended)
    assert len(ended) == len(trace.arrivals), "a request never ended"
    result = score(policy, ended, max(trace.arrivals[-1].time_s - t0, 1e-9), 0.0, driver.migrations, driver.freezes)
    return replace(result, placements=sorted_placements(driver.placements))


def _closed_loop_clients(trace: Trace, links: Mapping[str, tuple[str, float]],
                         driver: Driver) -> Callable[[Finished, float], None]:
    """The driver's on_finished hook: when a request that a closed-loop client followed ends,
    the client sends its next one its recorded gap later."""
    followers = {previous: (rid, gap_s) for rid, (previous, gap_s) in links.items()}
    by_id = {a.request_id: a for a in trace.arrivals}

    def follow(finished: Finished, now: float) -> None:
        if finished.request_id in followers:
            rid, gap_s = followers[finished.request_id]
            driver.arrive(now + gap_s, by_id[rid])

    return follow


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
