"""`heddle profile`: measure run times of the configured models on this machine's devices,
through the real executors, into a table the simulator and ProfileTable load (JSON or TOML; the
document's shape: profile_doc.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from heddle.backends.base import Executor, numpy_dtype
from heddle.scheduler import Core
from heddle.scheduler.profiles import ProfileTable
from heddle.scheduler.specs import ModelSpec, TensorSpec
from heddle.server.config.load import Config
from heddle.server.runtime.executors import make_executor
from heddle.server.tools.profile_doc import format_rows, profile_document, profile_from_trace
from heddle.server.tools.profile_file import load_profile_file, write_profile_file

# profile_from_trace (profile_doc.py) and the profile file's load and write (profile_file.py) are
# re-exported: this module is where their callers have found them.
__all__ = [
    "add_profile_parser", "load_profile_file", "measure_profile", "parse_batches", "parse_shape_overrides",
    "profile_from_trace",
    "run_profile", "sample_inputs", "write_profile_file",
]

# The load generator's rule for dynamic dims (clients/infer_inputs.generate_input): batch 1, others 16,
# so a profile measures what `heddle bench` sends unless --shape says otherwise.
_BATCH_DIM, _OTHER_DIM, _ID_HIGH = 1, 16, 100


def add_profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure a profile table (latency per model x device) on this machine")
    p.add_argument("--config", help="TOML config file (default: the embedded default)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per (model, device) (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    p.add_argument("--device", action="append", default=[], help="only this device (repeatable)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:INPUT=1x64",
                   help="input shape for a model (dynamic dims default to 1 for the first, 16 after); "
                        "with --under-load, PIPELINE:INPUT=... for a pipeline's input")
    p.add_argument("--batch", default="1", metavar="1,2,4,8",
                   help="also time passes of these many rows (models whose first dim is dynamic): the batch "
                        "curve dynamic batching plans with (default 1: one-row runs only)")
    p.add_argument("--parallel", action="store_true",
                   help="measure every device at once (as under load) instead of one after another")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from-trace", metavar="TRACE",
                   help="instead of running the models: take the stage runs a live server recorded "
                        "(heddle serve --trace), i.e. run times under serving load")
    p.add_argument("--under-load", type=float, metavar="S",
                   help="instead: serve the config in a child process and time the stage runs during S "
                        "seconds of load (run times as serving sees them: shared cores, thread hand-offs)")
    p.add_argument("--scenario", metavar="NAME|FILE",
                   help="with --under-load: the load (a heddle bench scenario); default every non-LLM "
                        "pipeline in a closed loop")
    p.add_argument("--clients", type=int, default=2,
                   help="with --under-load and no --scenario: closed-loop clients per pipeline (default 2)")
    p.add_argument("--policy", help="with --under-load: the server's policy (default: the config's)")
    p.add_argument("--load-warmup-s", type=float, default=2.0,
                   help="with --under-load: seconds of load first, left out of the table (default 2)")
    p.add_argument("--out", default="profile.json", help="output file, .json or .toml (default profile.json)")


def parse_shape_overrides(specs: Sequence[str]) -> dict[tuple[str, str], tuple[int, ...]]:
    """'model:input=1x64' -> {(model, input): (1, 64)}; ValueError says which spec is wrong."""
    shapes = {}
    for spec in specs:
        try:
            target, dims = spec.split("=", 1)
            model, name = target.split(":", 1)
            shapes[(model, name)] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shape {spec!r}: expected MODEL:INPUT=DIMxDIM..., "
                             "e.g. encoder:input_ids=1x64") from None
    return shapes


def sample_inputs(model: ModelSpec, shapes: Mapping[tuple[str, str], tuple[int, ...]],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs for a model's declared inputs, with the load generator's rules."""
    arrays = {}
    for t in model.inputs:
        shape = shapes.get((model.name, t.name)) or _default_shape(t)
        if not t.accepts_shape(shape):
            raise ValueError(f"--shape {model.name}:{t.name}: {list(shape)} does not fit {list(t.shape)}")
        dtype = numpy_dtype(t.datatype)
        if t.datatype == "BOOL":
            arrays[t.name] = rng.random(shape) < 0.5
        elif t.datatype == "BYTES":  # words like the load generator's
            words = rng.integers(0, _ID_HIGH, size=shape)
            arrays[t.name] = np.vectorize(lambda i: f"w{i}".encode(), otypes=[object])(words).reshape(shape)
        elif dtype.kind in "iu":
            arrays[t.name] = rng.integers(0, _ID_HIGH, size=shape).astype(dtype)
        elif dtype.kind == "f":
            arrays[t.name] = rng.standard_normal(shape).astype(dtype)
        else:
            raise ValueError(f"model {model.name}: cannot generate {t.datatype} input {t.name!r}")
    return arrays


def _default_shape(t: TensorSpec) -> tuple[int, ...]:
    return tuple((_BATCH_DIM if i == 0 else _OTHER_DIM) if d < 0 else d for i, d in enumerate(t.shape))


def _eligible(config: Config, models: Sequence[str], devices: Sequence[str]) -> tuple[dict, dict]:
    """(device -> models it may run, model -> op types), as the live scheduler decides it."""
    from heddle.backends.graph_summary import summarize_file

    summaries = {m.name: summarize_file(m.artifact) for m in config.models.values()
                 if m.backend == "onnxruntime" and (not models or m.name in models)}
    core = Core(config.devices, config.models, "fcfs", ProfileTable(summaries=summaries))
    plan: dict[str, list[str]] = {}
    for name, spec in config.models.items():
        # An LLM stage runs as prefill and decode steps the live runtime drives token by token;
        # its per-step times come from a trace (--from-trace), not from one run of the stage.
        if (models and name not in models) or spec.kind == "llm":
            continue
        for device in core.eligible_devices(name):
            if not devices or device in devices:
                plan.setdefault(device, []).append(name)
    return plan, {name: sorted(s.op_types) for name, s in summaries.items()}


_Key = tuple[str, int]  # (model, rows in the pass)


def _time_runs(executor: Executor, inputs: Mapping[_Key, Mapping[str, np.ndarray]], runs: int,
               warmup: int) -> dict[_Key, list[float]]:
    """In the device's worker thread: warm-up, then `runs` rounds over its models and batch sizes
    (interleaved, as a serving device alternates between them); the time is the backend's run alone."""
    for (name, _), arrays in inputs.items():
        for _ in range(warmup):
            executor.run(name, arrays)
    times: dict[_Key, list[float]] = {key: [] for key in inputs}
    for _ in range(runs):
        for key, arrays in inputs.items():
            t0 = time.perf_counter()
            executor.run(key[0], arrays)
            times[key].append(time.perf_counter() - t0)
    return times


def parse_batches(spec: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); one-row runs are always measured (the curve is relative to them)."""
    try:
        sizes = {int(b) for b in spec.split(",") if b.strip()}
    except ValueError:
        raise ValueError(f"--batch {spec!r}: expected sizes like 1,2,4,8") from None
    if any(b < 1 for b in sizes):
        raise ValueError(f"--batch {spec!r}: sizes must be >= 1")
    return tuple(sorted(sizes | {1}))


def _batched_inputs(model: ModelSpec, one_row: Mapping[str, np.ndarray],
                    batches: Sequence[int]) -> dict[_Key, Mapping[str, np.ndarray]]:
    """The one-row sample, and for a model whose every input has a dynamic first dim (what dynamic
    batching joins on) the sample repeated to each size; a model's max_batch caps its sizes."""
    out: dict[_Key, Mapping[str, np.ndarray]] = {(model.name, 1): one_row}
    if not all(t.shape and t.shape[0] < 0 for t in model.inputs):
        return out
    cap = model.batching.max_batch if model.batching.enabled else max(batches)
    for rows in (b for b in batches if 1 < b <= cap):
        out[(model.name, rows)] = {k: np.concatenate([v] * rows, axis=0) for k, v in one_row.items()}
    return out


def measure_profile(config: Config, *, runs: int = 30, warmup: int = 3, models: Sequence[str] = (),
                    devices: Sequence[str] = (), shapes: Mapping | None = None, parallel: bool = False,
                    seed: int = 0, batches: Sequence[int] = (1,)) -> dict[str, Any]:
    """Load each selected model on each device allowed to run it and time it; the profile document."""
    if runs < 1 or warmup < 0:
        raise ValueError("--runs must be >= 1 and --warmup >= 0")
    unknown = sorted(set(models) - set(config.models)) + sorted(set(devices) - {d.id for d in config.devices})
    if unknown:
        raise ValueError(f"unknown model or device {unknown}")
    plan, ops = _eligible(config, models, devices)
    rng = np.random.default_rng(seed)
    inputs = {name: sample_inputs(config.models[name], shapes or {}, rng)
              for name in sorted({m for ms in plan.values() for m in ms})}
    passes = {key: arrays for name, one in inputs.items()
              for key, arrays in _batched_inputs(config.models[name], one, batches).items()}
    executors = {s.id: make_executor(s) for s in config.devices if s.id in plan}
    try:
        for device, names in plan.items():
            ex = executors[device]
            for f in [ex.pool.submit(ex.load, config.models[n]) for n in names]:
                f.result()
        measured: dict[str, dict[_Key, list[float]]] = {}
        pending: dict[str, Future] = {}
        for device, names in plan.items():
            ex = executors[device]
            pending[device] = ex.pool.submit(_time_runs, ex, {k: a for k, a in passes.items() if k[0] in names},
                                             runs, warmup)
            if not parallel:
                measured[device] = pending.pop(device).result()
        measured.update({device: f.result() for device, f in pending.items()})
    finally:
        for ex in executors.values():
            ex.close()
    samples = {(name, device, rows): times for device, by_key in measured.items()
               for (name, rows), times in by_key.items()}
    models = {name: {"backend": config.models[name].backend, "op_types": ops.get(name, []),
                     "inputs": {k: list(v.shape) for k, v in arrays.items()}} for name, arrays in inputs.items()}
    devices = [d for d in config.devices if d.id in plan]
    return profile_document(config.source, devices, models, samples,
                     {"method": "executors", "runs": runs, "warmup": warmup, "parallel": parallel,
                      "batches": sorted({rows for _, rows in passes})})


def _under_load(args) -> dict[str, Any]:
    from heddle.clients.scenarios import load_scenario
    from heddle.server.tools.profile_load import default_load, measure_under_load

    if args.clients < 1:
        raise ValueError("--clients must be >= 1")
    scenario = load_scenario(args.scenario) if args.scenario else default_load(args.config, args.clients)
    return measure_under_load(args.config, scenario, duration_s=args.under_load, warmup_s=args.load_warmup_s,
                              seed=args.seed, policy=args.policy, shapes=parse_shape_overrides(args.shape))


def run_profile(args) -> int:
    from heddle.backends.base import BackendError
    from heddle.server.config.load import ConfigError, load_config

    try:
        if args.from_trace:
            doc = profile_from_trace(Path(args.from_trace).read_text(), args.from_trace)
        elif args.under_load is not None:
            doc = _under_load(args)
        else:
            doc = measure_profile(load_config(args.config), runs=args.runs, warmup=args.warmup,
                                  models=args.model, devices=args.device, seed=args.seed,
                                  shapes=parse_shape_overrides(args.shape), parallel=args.parallel,
                                  batches=parse_batches(args.batch))
    except (ConfigError, BackendError, OSError, ValueError, RuntimeError) as exc:
        print(f"heddle: {exc}", file=sys.stderr)
        return 2
    path = write_profile_file(doc, args.out)
    print(format_rows(doc))
    how = (f"from {doc['stage_runs']} recorded stage runs" if args.from_trace or args.under_load is not None
           else f"{args.runs} runs each after {args.warmup} warm-up")
    print(f"\nwrote {path} ({len(doc['entries'])} entries, {how})")
    return 0
