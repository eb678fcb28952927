"""The `heddle infer` and `heddle list` subcommands: build inputs, call the gateway, print results.

Importing this module has no side effects; the `heddle` CLI (server/cli.py) registers the
subcommands with add_infer_parser / add_list_parser and calls `args.func(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from heddle.clients.client import (
    GENERATION_OPTIONS,
    InferResult,
    StageEvent,
    StageTiming,
    TokenEvent,
)
from heddle.clients.targets import add_target_args, sync_client
from heddle.clients.tensors import DATATYPE_TO_NUMPY, TensorError, numpy_to_datatype
from heddle.v1 import heddle_pb2

__all__ = [
    "add_infer_parser",
    "add_list_parser",
    "build_inputs",
    "format_result",
    "generate_input",
    "parse_generation",
    "parse_input",
    "result_to_json",
    "run_infer",
    "run_list",
]

_BATCH_DIM, _OTHER_DIM = 1, 16  # what a dynamic (-1) dim becomes in generated inputs
_ID_HIGH = 100  # integer inputs are drawn from [0, 100): valid token ids / class ids for demo models
_HEAD = 6  # values shown per output in the table
_JSON_MAX_VALUES = 4096  # larger outputs are truncated to a head in --json


def add_infer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `infer PIPELINE ...` on an argparse subparsers object; sets `func=run_infer`."""
    p = subparsers.add_parser("infer", help="run a pipeline once and print its outputs and timings")
    p.add_argument("pipeline", help="pipeline name (see `heddle list pipelines`)")
    _add_connection_args(p)
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=VALUE",
                   help="NAME=FILE.npy or NAME=JSON_LITERAL; inputs not given are generated")
    p.add_argument("--output", dest="outputs", action="append", default=[], metavar="NAME",
                   help="return only this output (repeatable); default all")
    p.add_argument("--priority", type=int, default=0, help="0 = server default; higher is more urgent")
    p.add_argument("--deadline-ms", type=float, default=None, help="end-to-end deadline")
    p.add_argument("--stream", action="store_true",
                   help="print generated tokens as they come and each stage as it finishes")
    p.add_argument("--gen", dest="generation", action="append", default=[], metavar="KEY=VALUE",
                   help=f"LLM generation option (repeatable): {', '.join(GENERATION_OPTIONS)}; "
                        "stop_token_ids as 1,2,3")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    p.set_defaults(func=run_infer)
    return p


def add_list_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `list pipelines|models|devices` on an argparse subparsers object; sets `func=run_list`."""
    p = subparsers.add_parser("list", help="list the server's pipelines, models or devices")
    p.add_argument("what", choices=("pipelines", "models", "devices"))
    _add_connection_args(p)
    p.set_defaults(func=run_list)
    return p


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    add_target_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run_infer(args: argparse.Namespace) -> int:
    """Run `heddle infer`; 0 on success, 1 on an RPC error, 2 on a bad --input."""
    try:
        with sync_client(args) as client:
            # An unknown pipeline yields no declarations; the server's NOT_FOUND then says what is wrong.
            info = next((p for p in client.list_pipelines() if p.name == args.pipeline), None)
            declared = {} if info is None else {t.name: t for t in info.inputs}
            if info is not None and info.description and not args.json:  # e.g. that a demo LLM is random
                print(f"{args.pipeline}: {info.description}", flush=True)
            inputs = build_inputs(args.inputs, declared, np.random.default_rng(args.seed))
            kwargs = dict(priority=args.priority, deadline_ms=args.deadline_ms,
                          outputs=args.outputs or None, generation=parse_generation(args.generation))
            if args.stream:
                for event in client.infer_stream(args.pipeline, inputs, **kwargs):
                    _print_event(event, as_json=args.json)
            else:
                result = client.infer(args.pipeline, inputs, **kwargs)
                print(json.dumps(result_to_json(result), indent=2) if args.json
                      else format_result(result))
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (TensorError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Run `heddle list WHAT`; 0 on success, 1 on an RPC error."""
    try:
        with sync_client(args) as client:
            items = getattr(client, f"list_{args.what}")()
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({args.what: [_message_dict(m) for m in items]}, indent=2))
    else:
        print(_list_table(args.what, items))
    return 0


# --- inputs ---------------------------------------------------------------------------------

def build_inputs(specs: Sequence[str], declared: Mapping[str, heddle_pb2.TensorInfo],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays from `NAME=VALUE` arguments, plus a generated array for each declared input not given."""
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if not name or not _:
            raise ValueError(f"--input {spec!r}: expected NAME=FILE.npy or NAME=JSON_LITERAL")
        info = declared.get(name)
        inputs[name] = parse_input(name, value, info.datatype if info else None)
    for name, info in declared.items():
        if name not in inputs:
            inputs[name] = generate_input(info, rng)
    return inputs


def parse_input(name: str, value: str, datatype: str | None = None) -> np.ndarray:
    """A .npy file as saved, or a JSON literal converted to the declared datatype when known."""
    if value.endswith(".npy"):
        return np.load(Path(value), allow_pickle=False)
    try:
        literal = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--input {name}: {value!r} is neither a .npy path nor JSON ({err})") from None
    if datatype == "BYTES" or (datatype is None and _all_strings(literal)):
        return np.vectorize(lambda s: str(s).encode("utf-8"), otypes=[object])(literal)
    dtype = DATATYPE_TO_NUMPY.get(datatype) if datatype else None
    if datatype and dtype is None:
        raise TensorError(f"--input {name}: cannot build a {datatype} array here")
    return np.asarray(literal, dtype=dtype)


def parse_generation(specs: Sequence[str]) -> dict[str, Any] | None:
    """GenerationOptions fields from `KEY=VALUE` arguments (None when there are none)."""
    options: dict[str, Any] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or key not in GENERATION_OPTIONS:
            raise ValueError(f"--gen {spec!r}: expected KEY=VALUE with KEY one of {', '.join(GENERATION_OPTIONS)}")
        try:
            if key == "stop_token_ids":
                options[key] = [int(v) for v in value.split(",") if v.strip()]
            else:
                options[key] = float(value) if key in ("temperature", "top_p") else int(value)
        except ValueError:
            raise ValueError(f"--gen {spec!r}: {value!r} is not a number") from None
    return options or None


def _all_strings(literal: Any) -> bool:
    return isinstance(literal, str) or (isinstance(literal, list) and bool(literal)
                                        and all(_all_strings(x) for x in literal))


def generate_input(info: heddle_pb2.TensorInfo, rng: np.random.Generator) -> np.ndarray:
    """Random values for a declared input: dynamic dims become 1 (first) or 16; integers in [0, 100)."""
    shape = tuple((_BATCH_DIM if i == 0 else _OTHER_DIM) if d < 0 else d
                  for i, d in enumerate(info.shape))
    datatype = info.datatype
    if datatype == "BYTES":
        words = rng.integers(0, _ID_HIGH, size=shape)
        return np.vectorize(lambda i: f"w{i}".encode(), otypes=[object])(words).reshape(shape)
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise TensorError(f"input {info.name!r}: cannot generate datatype {datatype!r}")
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, _ID_HIGH, size=shape, dtype=dtype.newbyteorder("="))
    return rng.standard_normal(shape).astype(dtype)


# --- output ---------------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [list(headers), *cells])


def _fmt_value(v: Any) -> str:
    if isinstance(v, bytes):
        return repr(v[:24] + (b"..." if len(v) > 24 else b""))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v.item() if isinstance(v, np.generic) else v)


def _head(array: np.ndarray, count: int) -> str:
    flat = array.reshape(-1)
    values = ", ".join(_fmt_value(v) for v in flat[:count])
    return f"[{values}{', ...' if flat.size > count else ''}]"


def _stage_row(s: StageTiming) -> list[str]:
    return [s.stage, s.model, s.device, s.status, f"{s.queue_ms:.3f}", f"{s.compute_ms:.3f}",
            f"{s.start_offset_ms:.3f}", f"{s.end_offset_ms:.3f}", s.error]


_STAGE_HEADERS = ("stage", "model", "device", "status", "queue ms", "compute ms",
                  "start ms", "end ms", "error")


def format_result(result: InferResult) -> str:
    """A readable report: a header line, a table of outputs, a table of stages, the total."""
    header = (f"pipeline {result.pipeline}  request {result.request_id}  "
              f"priority {result.priority}"
              + ("  DEADLINE MISSED" if result.deadline_missed else ""))
    outputs = _table(("output", "datatype", "shape", "values"),
                     [(n, numpy_to_datatype(a.dtype), list(a.shape), _head(a, _HEAD))
                      for n, a in result.outputs.items()])
    # Over HTTP (KServe REST) a response carries no per-stage timings: no empty table then.
    stages = _table(_STAGE_HEADERS, [_stage_row(s) for s in result.stages]) + "\n\n" if result.stages else ""
    return f"{header}\n\n{outputs}\n\n{stages}total {result.total_ms:.3f} ms"


def _stage_json(s: StageTiming) -> dict[str, Any]:
    return {k: getattr(s, k) for k in StageTiming.__dataclass_fields__}


def _json_values(array: np.ndarray) -> Any:
    flat = array.reshape(-1)[:_JSON_MAX_VALUES]
    if flat.dtype == object:
        return [v.decode("utf-8", "backslashreplace") for v in flat]
    return flat.astype(np.float64).tolist() if flat.dtype.name == "bfloat16" else flat.tolist()


def result_to_json(result: InferResult) -> dict[str, Any]:
    """A JSON-ready dict; output values are flattened (row-major) and cut at 4096 with truncated=true."""
    outputs = [{"name": n, "datatype": numpy_to_datatype(a.dtype), "shape": list(a.shape),
                "values": _json_values(a), "truncated": a.size > _JSON_MAX_VALUES}
               for n, a in result.outputs.items()]
    return {"request_id": result.request_id, "pipeline": result.pipeline,
            "priority": result.priority, "total_ms": result.total_ms,
            "deadline_missed": result.deadline_missed, "outputs": outputs,
            "stages": [_stage_json(s) for s in result.stages]}


def _print_event(event: TokenEvent | StageEvent | InferResult, *, as_json: bool) -> None:
    if isinstance(event, TokenEvent):
        line = (json.dumps({"event": "tokens", "stage": event.stage, "token_ids": list(event.token_ids),
                            "index": event.index, "offset_ms": event.offset_ms, "text": event.text})
                if as_json else f"tokens: {event.stage} #{event.index} {list(event.token_ids)} "
                f"{event.text!r} at {event.offset_ms:.3f} ms")
    elif isinstance(event, StageEvent):
        line = (json.dumps({"event": "stage_done", **_stage_json(event)}) if as_json else
                f"stage done: {event.stage} model={event.model} device={event.device} "
                f"status={event.status} queue={event.queue_ms:.3f} ms "
                f"compute={event.compute_ms:.3f} ms "
                f"[{event.start_offset_ms:.3f} -> {event.end_offset_ms:.3f} ms]"
                + (f" error={event.error}" if event.error else ""))
    else:
        line = (json.dumps({"event": "result", **result_to_json(event)}) if as_json
                else "\n" + format_result(event))
    print(line, flush=True)


def _message_dict(msg: Any) -> dict[str, Any]:
    # Not json_format.MessageToDict: proto3 JSON writes int64 (shapes) as strings.
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None:
            value = [_message_dict(v) for v in value] if fd.is_repeated else _message_dict(value)
        elif fd.is_repeated:
            value = list(value)
        out[fd.name] = value
    return out


def _tensors(infos: Sequence[heddle_pb2.TensorInfo]) -> str:
    return ", ".join(f"{t.name}:{t.datatype}{list(t.shape)}" for t in infos)


def _list_table(what: str, items: Sequence[Any]) -> str:
    if what == "pipelines":
        return _table(("pipeline", "inputs", "outputs", "stages"),
                      [(p.name, _tensors(p.inputs), _tensors(p.outputs),
                        " ".join(s.name for s in p.stages)) for p in items])
    if what == "models":
        return _table(("model", "backend", "kind", "inputs", "outputs", "devices"),
                      [(m.name, m.backend, m.kind, _tensors(m.inputs), _tensors(m.outputs),
                        ",".join(m.devices)) for m in items])
    return _table(("device", "kind", "backend", "providers", "slots", "running", "queued", "healthy"),
                  [(d.id, d.kind, d.backend, ",".join(d.providers), d.slots, d.running, d.queued,
                    d.healthy) for d in items])
