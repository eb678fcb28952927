"""Discrete-event simulator: drives the real scheduler Core on a virtual clock with a profile
table (a shipped platform and scenario), and scores the policy it ran.

Pure: no wall clock and no I/O; `heddle simulate` (server/simulate_cmd.py) prints the tables.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import replace
from typing import Mapping

from heddle.scheduler.budget import critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.policies import make_policy
from heddle.scheduler.profiles import ProfileTable
from heddle.scheduler.sim.platforms import Platform
from heddle.scheduler.sim.scoring import PolicyResult, RequestRecord, score
from heddle.scheduler.sim.workload import Arrival, Scenario, build_pipelines, generate_arrivals
from heddle.scheduler.state import Request

__all__ = ["simulate"]

_ARRIVE, _DONE = 0, 1


def simulate(platform: Platform, scenario: Scenario, policy: str, *, duration_s: float | None = None,
             seed: int = 1, policy_options: Mapping | None = None) -> PolicyResult:
    """Run the scenario's arrivals through a Core under `policy` until every request ends."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    truth = platform.table()
    pipelines, models = build_pipelines([s.pipeline for s in scenario.sources],
                                        {m: platform.devices_of(m) for m in platform.models})
    profiles = ProfileTable(table=truth, ops={m: f.op_types for m, f in platform.models.items()})
    core = Core(platform.devices, models, make_policy(policy, **dict(policy_options or {})), profiles)

    def best_s(model: str) -> float:
        return min(truth[(model, d, 0)].latency_s for d in platform.devices_of(model))

    isolated = {name: critical_path_s(p, lambda s, p=p: best_s(p.stage(s).model)) for name, p in pipelines.items()}
    events: list[tuple[float, int, int, object]] = []
    for i, arrival in enumerate(generate_arrivals(scenario.sources, duration_s, seed)):
        events.append((arrival.time_s, i, _ARRIVE, arrival))
    heapq.heapify(events)
    records: dict[str, RequestRecord] = {}
    counter, energy_j, migrations, freezes = len(events), 0.0, 0, 0
    placements: dict[str, dict[str, int]] = {}
    while events:
        now, _, kind, item = heapq.heappop(events)
        if kind == _ARRIVE:
            _submit(core, item, pipelines, isolated, records, now)
        else:
            core.on_stage_done(item[0], item[1], now)
        plan = core.schedule(now)
        for d in plan.dispatches:
            level = core.level(d.device)
            entry = truth[(d.model, d.device, level)]
            run_s = entry.latency_s * _noise(seed, d.request_id, d.stage, platform.models[d.model].cv)
            energy_j += entry.power_w * run_s
            per_model = placements.setdefault(d.model, {})
            per_model[d.device] = per_model.get(d.device, 0) + 1
            counter += 1
            heapq.heappush(events, (now + run_s, counter, _DONE, (d.request_id, d.stage)))
        for f in plan.finished:
            record = records[f.request_id]
            assert not record.outcome, f"{f.request_id} ended twice"
            record.outcome, record.finish_s = f.outcome.value, now
            core.forget(f.request_id)
        migrations += len(plan.migrated)
        freezes += len(plan.frozen)
    assert all(r.outcome for r in records.values()), "a request never ended"
    result = score(policy, list(records.values()), duration_s, energy_j, migrations, freezes)
    return replace(result, placements={m: dict(sorted(c.items())) for m, c in sorted(placements.items())})


def _submit(core: Core, arrival: Arrival, pipelines, isolated, records, now: float) -> None:
    isolated_s = isolated[arrival.pipeline]
    deadline = arrival.deadline_s
    if arrival.deadline_factor is not None:
        deadline = arrival.deadline_factor * isolated_s
    absolute = None if deadline is None else now + deadline
    records[arrival.request_id] = RequestRecord(arrival.request_id, arrival.source, arrival.priority,
                                                now, absolute, isolated_s)
    core.submit(Request(arrival.request_id, pipelines[arrival.pipeline], arrival.priority, now, absolute), now)


def _noise(seed: int, request_id: str, stage: str, cv: float) -> float:
    """Mean-1 lognormal run-time factor, the same for a given run under every policy
    (common random numbers make policy differences sharper)."""
    if cv <= 0:
        return 1.0
    digest = hashlib.blake2b(f"{seed}/{request_id}/{stage}".encode(), digest_size=16).digest()
    u1 = (int.from_bytes(digest[:8], "little") + 1) / 2.0**64  # (0, 1]
    u2 = int.from_bytes(digest[8:], "little") / 2.0**64
    normal = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller
    sigma = math.sqrt(math.log1p(cv * cv))
    return math.exp(sigma * normal - sigma * sigma / 2)
