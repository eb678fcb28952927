"""Discrete-event simulator: drives the real scheduler Core on a virtual clock with a profile
table, and scores each policy (deadline violations, ANTT, latency per priority, throughput).

Pure: no wall clock and no I/O; the `heddle simulate` command prints what `run_from_args`
returns and writes the JSON report.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

from heddle.scheduler.budget import critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.platforms import DEFAULT_PLATFORM, DEFAULT_SCENARIO, PLATFORMS, SCENARIOS, Platform
from heddle.scheduler.policies import POLICIES, make_policy
from heddle.scheduler.profiles import ProfileTable
from heddle.scheduler.state import Outcome, Request
from heddle.scheduler.workload import Arrival, Scenario, build_pipelines, generate_arrivals

__all__ = [
    "ClassStats", "PolicyResult", "RequestRecord", "add_simulate_arguments", "format_table",
    "run_from_args", "score", "simulate",
]

_ARRIVE, _DONE = 0, 1


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


def _stats(records: Sequence[RequestRecord]) -> ClassStats:
    deadline = [r for r in records if r.deadline_s is not None]
    done = sorted((r.finish_s - r.arrival_s) * 1000 for r in records if r.outcome == Outcome.OK.value)
    return ClassStats(len(records), len(deadline),
                      sum(r.violated for r in deadline) / len(deadline) if deadline else 0.0,
                      _pct(done, 50), _pct(done, 99))


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def score(policy, records, duration_s, energy_j, migrations, freezes) -> PolicyResult:
    """One policy's figures from its ended requests (the simulator's and trace replay's)."""
    done = [r for r in records if r.outcome == Outcome.OK.value]
    overall = _stats(records)
    classes = sorted({r.priority for r in records}, reverse=True)
    sources = sorted({r.source for r in records})
    return PolicyResult(
        policy=policy, requests=len(records), completed=len(done), violation_rate=overall.violation_rate,
        antt=sum((r.finish_s - r.arrival_s) / r.isolated_s for r in done) / len(done) if done else math.nan,
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

    def avg(values) -> float:
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    def stats(maps: list[Mapping]) -> dict:
        keys = sorted({k for m in maps for k in m}, key=str)
        return {k: ClassStats(round(avg([m[k].requests for m in maps if k in m])),
                              round(avg([m[k].with_deadline for m in maps if k in m])),
                              avg([m[k].violation_rate for m in maps if k in m]),
                              avg([m[k].p50_ms for m in maps if k in m]), avg([m[k].p99_ms for m in maps if k in m]))
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
        placements=placements)


def format_table(results: Sequence[PolicyResult]) -> str:
    """One row per policy: DVR, ANTT, p50/p99 latency (ms) per priority class, throughput."""
    classes = sorted({p for r in results for p in r.per_class}, reverse=True)
    head = ["policy", "DVR %", "ANTT"] + [f"prio {p} p50/p99 ms" for p in classes] + ["req/s", "energy J", "migr", "frz"]
    rows = [head]
    for r in results:
        lat = [f"{r.per_class[p].p50_ms:.1f}/{r.per_class[p].p99_ms:.1f}" if p in r.per_class else "-" for p in classes]
        rows.append([r.policy, f"{100 * r.violation_rate:.1f}", f"{r.antt:.2f}", *lat,
                     f"{r.throughput_rps:.1f}", f"{r.energy_j:.1f}", str(r.migrations), str(r.freezes)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(results) > 1:
        best = min(results, key=lambda r: r.violation_rate)
        worst = max(results, key=lambda r: r.violation_rate)
        lines.append(f"\nDVR spread: {100 * (worst.violation_rate - best.violation_rate):.1f} points "
                     f"(best {best.policy}, worst {worst.policy})")
    return "\n".join(lines)


def add_simulate_arguments(parser, extra_platforms: Sequence[str] = ()) -> None:
    parser.add_argument("--policy", default="all", help=f"one of {sorted(POLICIES)}, or 'all' (default)")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO, choices=sorted(SCENARIOS))
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, choices=[*sorted(PLATFORMS), *extra_platforms])
    parser.add_argument("--duration", type=float, default=None, help="seconds of arrivals (default: the scenario's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=1,
                        help="runs per policy with seeds seed, seed+1, ...; the table shows their mean")
    parser.add_argument("--max-wait-s", type=float, default=None, help="aging bound for every policy")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT")


def seeds(args) -> range:
    if args.replicas < 1:
        raise ValueError("--replicas must be >= 1")
    return range(args.seed, args.seed + args.replicas)


def _seeds_text(args) -> str:
    return f"seed {args.seed}" if args.replicas == 1 else f"mean of seeds {args.seed}-{args.seed + args.replicas - 1}"


def run_from_args(args) -> tuple[str, dict]:
    """Simulate what the arguments ask for; returns the table and a JSON-ready report."""
    if args.policy != "all" and args.policy not in POLICIES:
        raise ValueError(f"unknown policy {args.policy!r}; known: {sorted(POLICIES)} or 'all'")
    names = list(POLICIES) if args.policy == "all" else [args.policy]
    platform, scenario = PLATFORMS[args.platform], SCENARIOS[args.scenario]
    options = {} if args.max_wait_s is None else {"max_wait_s": args.max_wait_s}
    results = [mean_result([simulate(platform, scenario, n, duration_s=args.duration, seed=seed, policy_options=options)
                            for seed in seeds(args)]) for n in names]
    duration_s = scenario.duration_s if args.duration is None else args.duration
    title = (f"heddle simulate: scenario {scenario.name!r} ({scenario.description}) on {platform.description}, "
             f"{duration_s:g} s of arrivals, {_seeds_text(args)}")
    report = {"scenario": scenario.name, "platform": platform.name, "duration_s": duration_s, "seed": args.seed,
              "replicas": args.replicas,
              "results": [asdict(r) for r in results]}
    best, worst = min(results, key=lambda r: r.violation_rate), max(results, key=lambda r: r.violation_rate)
    report["dvr_spread"] = {"best": best.policy, "worst": worst.policy,
                            "points": 100 * (worst.violation_rate - best.violation_rate)}
    return f"{title}\n\n{format_table(results)}", report
