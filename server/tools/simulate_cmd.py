"""`heddle simulate`: its arguments, the files it reads and writes, and the tables it prints.
The simulations themselves are pure and live in scheduler/sim/."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from heddle.scheduler.policies import POLICIES
from heddle.scheduler.sim.plant import IDLE_W
from heddle.scheduler.sim.platforms import DEFAULT_PLATFORM, DEFAULT_SCENARIO, PLATFORMS, SCENARIOS, Platform
from heddle.scheduler.sim.power_budget import budget_table
from heddle.scheduler.sim.profile_fill import fill_missing
from heddle.scheduler.sim.replay import recorded, replay
from heddle.scheduler.sim.scoring import mean_result
from heddle.scheduler.sim.simulator import simulate_run
from heddle.scheduler.sim.tracefile import TraceError, parse_profile, parse_trace
from heddle.scheduler.sim.workload import Scenario
from heddle.scheduler.specs import BatchOptions
from heddle.server.tools.sim_files import load_platform, load_workload, record_rows, write_records
from heddle.server.tools.sim_tables import format_budget_table, format_means, format_table, with_recorded_row

__all__ = ["LOCAL_PLATFORM", "add_simulate_parser", "run_from_args", "run_replay_from_args", "run_simulate", "seeds"]

LOCAL_PLATFORM = "local"  # --platform value: the devices of the trace, timed by the profile


def add_simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="compare scheduling policies on a simulated platform (virtual clock)")
    p.add_argument("--policy", default="all", help=f"one of {sorted(POLICIES)}, or 'all' (default)")
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, choices=sorted(SCENARIOS))
    p.add_argument("--workload", metavar="FILE", help="a workload TOML file (heddle bench's [[apps]] over "
                   "[[pipelines]] of the platform's models; docs/SCHEDULING.md) in place of --scenario")
    p.add_argument("--platform", default=DEFAULT_PLATFORM, metavar="NAME|FILE",
                   help=f"a shipped platform ({', '.join(sorted(PLATFORMS))}), a platform TOML file, or "
                        f"{LOCAL_PLATFORM!r} (the devices of a replayed trace)")
    p.add_argument("--records", metavar="FILE", help="write every simulated request (per policy and seed) to "
                   "FILE: CSV if it ends in .csv, else JSON lines")
    p.add_argument("--duration", type=float, default=None, help="seconds of arrivals (default: the scenario's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--replicas", type=int, default=1,
                   help="runs per policy with seeds seed, seed+1, ...; the table shows their mean")
    p.add_argument("--max-wait-s", type=float, default=None, help="aging bound for every policy")
    p.add_argument("--max-batch", type=int, default=None, metavar="ROWS",
                   help="dynamic batching for every model: runs of up to ROWS rows share a pass, timed on the "
                        "default batch axis (docs/SCHEDULING.md)")
    p.add_argument("--max-queue-delay-us", type=float, default=None, metavar="US",
                   help="with --max-batch: longest a run waits for a fuller batch (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT")
    p.add_argument("--power-budgets", metavar="W[,W...]",
                   help="instead of the policy table: per box budget (W), twill under heddle's controller vs "
                        "the best baseline under a throttling governor, and the two crossed (docs/POWER.md)")
    _add_replay_arguments(p)


def _add_replay_arguments(parser) -> None:
    """--trace/--profile/--segment for `heddle simulate` (with --platform local)."""
    parser.add_argument("--trace", metavar="FILE", help="replay a live server's JSON-lines trace "
                        "(heddle serve --trace); needs --profile and --platform local")
    parser.add_argument("--profile", metavar="FILE", help="run times measured by `heddle profile` (JSON or TOML)")
    parser.add_argument("--segment", metavar="POLICY", help="replay only the arrivals recorded while the "
                        "live server ran POLICY")
    parser.add_argument("--fill-from", metavar="FILE", help="an isolated `heddle profile` of the same config: "
                        "(model, device) pairs --profile lacks (never run under its load) come from it, slowed "
                        "by the device's load factor (scheduler/sim/profile_fill.py)")
    parser.add_argument("--closed", metavar="PIPELINE", action="append", default=[],
                        help="the trace's requests for PIPELINE came from closed-loop clients: each arrives "
                             "its recorded gap after the request it followed ends in the replay (repeatable)")
    parser.add_argument("--local-window-s", type=float, metavar="S",
                        help="draw each run time from the runs recorded within S seconds of the same moment "
                             "(needs a profile made from this trace: heddle profile --from-trace)")


def run_simulate(args) -> int:
    """Print the table the arguments ask for (and write its report); 2 on bad arguments or files."""
    try:
        replaying = args.trace or args.platform == LOCAL_PLATFORM
        if args.records and (args.power_budgets or replaying):
            raise ValueError("--records writes the requests of a simulated workload; it is not available with "
                             "--power-budgets or a replayed trace")
        if replaying and args.workload:
            raise ValueError("--workload simulates a platform; a replayed trace brings its own arrivals")
        if args.power_budgets:
            table, report = _budgets_from_args(args)
        elif replaying:
            table, report = _replay_files(args)
        else:
            table, report = run_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"heddle: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def seeds(args) -> range:
    if args.replicas < 1:
        raise ValueError("--replicas must be >= 1")
    return range(args.seed, args.seed + args.replicas)


def _seeds_text(args) -> str:
    return f"seed {args.seed}" if args.replicas == 1 else f"mean of seeds {args.seed}-{args.seed + args.replicas - 1}"


def _policy_names(args) -> list[str]:
    if args.policy != "all" and args.policy not in POLICIES:
        raise ValueError(f"unknown policy {args.policy!r}; known: {sorted(POLICIES)} or 'all'")
    return list(POLICIES) if args.policy == "all" else [args.policy]


def _platform_and_scenario(args) -> tuple[Platform, Scenario]:
    """The shipped ones by name, or the files the arguments give."""
    platform = load_platform(args.platform)
    workload = getattr(args, "workload", None)
    return platform, (load_workload(workload, platform) if workload else SCENARIOS[args.scenario])


def run_from_args(args) -> tuple[str, dict]:
    """Simulate what the arguments ask for; returns the table and a JSON-ready report (and writes
    the per-request records when --records names a file)."""
    names = _policy_names(args)
    platform, scenario = _platform_and_scenario(args)
    options = {} if args.max_wait_s is None else {"max_wait_s": args.max_wait_s}
    batching = _batching(args)
    results, rows = [], []
    for n in names:
        runs = [simulate_run(platform, scenario, n, duration_s=args.duration, seed=seed, policy_options=options,
                             model_options=batching) for seed in seeds(args)]
        results.append(mean_result([run.result for run in runs]))
        for seed, run in zip(seeds(args), runs, strict=True):
            rows += record_rows(n, seed, run.records)
    duration_s = scenario.duration_s if args.duration is None else args.duration
    title = (f"heddle simulate: scenario {scenario.name!r} ({scenario.description}) on {platform.description}, "
             f"{duration_s:g} s of arrivals, {_seeds_text(args)}")
    if batching:
        title += f", batching {batching}"
    report = {"scenario": scenario.name, "platform": platform.name, "duration_s": duration_s, "seed": args.seed,
              "replicas": args.replicas, "batching": batching,
              "results": [asdict(r) for r in results]}
    best, worst = min(results, key=lambda r: r.violation_rate), max(results, key=lambda r: r.violation_rate)
    report["dvr_spread"] = {"best": best.policy, "worst": worst.policy,
                            "points": 100 * (worst.violation_rate - best.violation_rate)}
    if getattr(args, "records", None):
        write_records(args.records, rows)
        report["records"] = str(args.records)
    return f"{title}\n\n{format_table(results)}\n\n{format_means(results)}", report


def _batching(args) -> dict[str, float]:
    """--max-batch / --max-queue-delay-us as model options; ValueError when out of range."""
    max_batch, delay_us = getattr(args, "max_batch", None), getattr(args, "max_queue_delay_us", None)
    if max_batch is None:
        if delay_us is not None:
            raise ValueError("--max-queue-delay-us needs --max-batch")
        return {}
    options = {"max_batch": max_batch, "max_queue_delay_us": delay_us or 0.0}
    BatchOptions.of(options)  # the core's own check, said before any run
    return options


def _replay_files(args) -> tuple[str, dict]:
    """`heddle simulate --trace FILE --profile FILE --platform local`: a live trace, replayed."""
    from heddle.server.tools.profile_file import load_profile_file

    if not (args.trace and args.profile and args.platform == LOCAL_PLATFORM):
        raise ValueError("replaying a trace needs --trace FILE, --profile FILE (from `heddle profile`) "
                         "and --platform local together")
    with open(args.trace) as f:
        trace_text = f.read()
    fill = getattr(args, "fill_from", None)
    return run_replay_from_args(args, trace_text, load_profile_file(args.profile),
                                load_profile_file(fill) if fill else None)


def run_replay_from_args(args, trace_text: str, profile_doc: Mapping,
                         fill_doc: Mapping | None = None) -> tuple[str, dict]:
    """Replay what the arguments ask for; returns the table and a JSON-ready report."""
    try:
        names = _policy_names(args)
    except ValueError as exc:
        raise TraceError(str(exc)) from None
    trace, profile = parse_trace(trace_text), parse_profile(profile_doc)
    if fill_doc is not None:
        profile = fill_missing(profile, parse_profile(fill_doc), trace.bandwidth)
    if args.segment:
        trace = trace.segment(args.segment)
    options = {} if args.max_wait_s is None else {"max_wait_s": args.max_wait_s}
    results = [mean_result([replay(trace, profile, n, seed=seed, policy_options=options, closed=args.closed,
                                   local_window_s=args.local_window_s) for seed in seeds(args)]) for n in names]
    live = recorded(trace, profile, f"recorded ({args.segment or 'live'})")
    span_s = trace.arrivals[-1].time_s - trace.arrivals[0].time_s
    where = f" (arrivals recorded under {args.segment})" if args.segment else ""
    title = (f"heddle simulate: trace {args.trace}{where}, {len(trace.arrivals)} arrivals over {span_s:.1f} s, "
             f"devices {[d.id for d in (trace.devices or profile.devices)]} timed by {args.profile}, "
             f"{_seeds_text(args)}")
    report = {"platform": LOCAL_PLATFORM, "trace": str(args.trace), "profile": str(args.profile),
              "segment": args.segment, "arrivals": len(trace.arrivals), "span_s": span_s, "seed": args.seed,
              "replicas": args.replicas, "closed": list(args.closed), "local_window_s": args.local_window_s,
              "fill_from": getattr(args, "fill_from", None),
              "results": [asdict(r) for r in results],
              "recorded": None if live is None else asdict(live)}
    return f"{title}\n\n{with_recorded_row(results, live)}", report


def _budgets_from_args(args) -> tuple[str, dict]:
    """--power-budgets 10,15,20: the simulated budget table (docs/POWER.md) and its rows."""
    try:
        budgets = [float(w) for w in args.power_budgets.split(",")]
    except ValueError:
        raise ValueError(f"--power-budgets {args.power_budgets!r}: expected watts separated by commas, "
                         "e.g. 10,15,20") from None
    if not budgets or any(not w > 0 for w in budgets):
        raise ValueError(f"--power-budgets {args.power_budgets!r}: every budget must be over 0 W")
    if args.platform == LOCAL_PLATFORM or args.trace:
        raise ValueError("--power-budgets simulates a shipped platform; it does not replay a trace")
    platform, scenario = _platform_and_scenario(args)
    unknown = sorted({d.kind for d in platform.devices} - set(IDLE_W))
    if unknown:
        raise ValueError(f"--power-budgets: the simulated plant has no idle power for device kinds {unknown} "
                         f"(it knows {sorted(IDLE_W)})")
    rows = budget_table(platform, scenario, budgets, seed=args.seed, duration_s=args.duration)
    top = max(s.priority for s in scenario.sources)
    report = {"scenario": scenario.name, "platform": platform.name, "seed": args.seed, "budgets_w": budgets,
              "rows": [asdict(r) for r in rows]}
    return format_budget_table(rows, top), report
