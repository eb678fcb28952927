"""Scoring a simulated (or recorded) run: one record per request, and the figures per policy
(deadline violations, ANTT, latency per priority class and source, throughput)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from heddle.scheduler.state import Outcome

__all__ = [
    "ClassStats", "PolicyResult", "RequestRecord", "ended_records", "mean_result", "score", "sorted_placements",
    "utilisation",
]

_K = TypeVar("_K")  # a per-class (int) or per-source (str) table


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    source: str
    priority: int
    arrival_s: float
    deadline_s: float | None  # absolute
    isolated_s: float
    finish_s: float | None = None
    outcome: str = ""

    @property
    def latency_s(self) -> float:
        """Arrival to finish, of a request that finished."""
        assert self.finish_s is not None, f"request {self.request_id} has not finished"
        return self.finish_s - self.arrival_s

    @property
    def violated(self) -> bool:
        return self.deadline_s is not None and (
            self.outcome != Outcome.OK.value or self.finish_s is None or self.finish_s > self.deadline_s)


@dataclass(frozen=True, slots=True)
class ClassStats:
    requests: int
    with_deadline: int
    violation_rate: float
    p50_ms: float
    p99_ms: float
    mean_ms: float = math.nan  # of the completed requests


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    requests: int
    completed: int
    violation_rate: float  # over requests with a deadline: late, shed or failed
    antt: float  # mean (finish - arrival) / isolated latency, completed requests
    throughput_rps: float  # completed requests per simulated second of arrivals
    energy_j: float  # active energy of every run
    migrations: int
    freezes: int
    per_class: Mapping[int, ClassStats] = field(default_factory=dict)
    per_source: Mapping[str, ClassStats] = field(default_factory=dict)
    placements: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # model -> device -> runs
    # device -> busy seconds / (slots x the run's span, first arrival to last end); {} where not measured
    utilisation: Mapping[str, float] = field(default_factory=dict)


def _stats(records: Sequence[RequestRecord]) -> ClassStats:
    deadline = [r for r in records if r.deadline_s is not None]
    done = sorted(r.latency_s * 1000 for r in records if r.outcome == Outcome.OK.value)
    return ClassStats(len(records), len(deadline),
                      sum(r.violated for r in deadline) / len(deadline) if deadline else 0.0,
                      _pct(done, 50), _pct(done, 99), sum(done) / len(done) if done else math.nan)


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def score(policy: str, records: Sequence[RequestRecord], duration_s: float, energy_j: float, migrations: int,
          freezes: int) -> PolicyResult:
    """One policy's figures from its ended requests (the simulator's and trace replay's)."""
    done = [r for r in records if r.outcome == Outcome.OK.value]
    overall = _stats(records)
    classes = sorted({r.priority for r in records}, reverse=True)
    sources = sorted({r.source for r in records})
    return PolicyResult(
        policy=policy, requests=len(records), completed=len(done), violation_rate=overall.violation_rate,
        antt=sum(r.latency_s / r.isolated_s for r in done) / len(done) if done else math.nan,
        throughput_rps=len(done) / duration_s, energy_j=energy_j, migrations=migrations, freezes=freezes,
        per_class={p: _stats([r for r in records if r.priority == p]) for p in classes},
        per_source={s: _stats([r for r in records if r.source == s]) for s in sources},
    )


def mean_result(results: Sequence[PolicyResult]) -> PolicyResult:
    """The mean of one policy's replications (runs with different seeds): what a single draw of
    run times says is noisy (a few late frames more or less move a small DVR by points), the
    expectation is the prediction. Counts are rounded means; placements are summed."""
    if len(results) == 1:
        return results[0]

    def avg(values: Iterable[float]) -> float:
        known = [v for v in values if not math.isnan(v)]
        return sum(known) / len(known) if known else math.nan

    def stats(maps: list[Mapping[_K, ClassStats]]) -> dict[_K, ClassStats]:
        keys = sorted({k for m in maps for k in m}, key=str)
        return {k: ClassStats(round(avg([m[k].requests for m in maps if k in m])),
                              round(avg([m[k].with_deadline for m in maps if k in m])),
                              avg([m[k].violation_rate for m in maps if k in m]),
                              avg([m[k].p50_ms for m in maps if k in m]), avg([m[k].p99_ms for m in maps if k in m]),
                              avg([m[k].mean_ms for m in maps if k in m]))
                for k in keys}

    placements: dict[str, dict[str, int]] = {}
    for r in results:
        for model, devices in r.placements.items():
            for device, n in devices.items():
                placements.setdefault(model, {})[device] = placements.get(model, {}).get(device, 0) + n
    first = results[0]
    return PolicyResult(
        policy=first.policy, requests=round(avg([r.requests for r in results])),
        completed=round(avg([r.completed for r in results])), violation_rate=avg([r.violation_rate for r in results]),
        antt=avg([r.antt for r in results]), throughput_rps=avg([r.throughput_rps for r in results]),
        energy_j=avg([r.energy_j for r in results]), migrations=round(avg([r.migrations for r in results])),
        freezes=round(avg([r.freezes for r in results])),
        per_class=stats([r.per_class for r in results]), per_source=stats([r.per_source for r in results]),
        placements=placements,
        utilisation={d: avg([r.utilisation.get(d, math.nan) for r in results])
                     for d in sorted({d for r in results for d in r.utilisation})})


def ended_records(records: Mapping[str, RequestRecord],
                  finished: Mapping[str, tuple[Outcome, float]]) -> list[RequestRecord]:
    """The records (in arrival order), each with how and when its request ended."""
    for request_id, record in records.items():
        assert request_id in finished, f"{request_id} never ended"
        outcome, record.finish_s = finished[request_id]
        record.outcome = outcome.value
    return list(records.values())


def utilisation(runs: Iterable[tuple[float, float, str]], slots: Mapping[str, int], start_s: float = 0.0
                ) -> dict[str, float]:
    """Per device: busy seconds over slots x the span from `start_s` to the last run's end. Runs are
    (start_s, end_s, device); a device that ran nothing is 0."""
    busy = dict.fromkeys(slots, 0.0)
    end_s = start_s
    for begin, end, device in runs:
        busy[device] = busy.get(device, 0.0) + (end - begin)
        end_s = max(end_s, end)
    span_s = end_s - start_s
    return {d: (b / (slots.get(d, 1) * span_s) if span_s > 0 else 0.0) for d, b in sorted(busy.items())}


def sorted_placements(placements: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {m: dict(sorted(c.items())) for m, c in sorted(placements.items())}
