"""The `heddle infer` and `heddle list` subcommands: build inputs (infer_inputs.py), call the gateway,
print results.

Importing this module has no side effects; the `heddle` CLI (server/cli.py) registers the
subcommands with add_infer_parser / add_list_parser and calls `args.func(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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
from heddle.clients.infer_inputs import build_inputs, generate_input, parse_generation, parse_input
from heddle.clients.targets import add_target_args, sync_client
from heddle.clients.tensors import TensorError, numpy_to_datatype
from heddle.v1 import heddle_pb2

# build_inputs, generate_input, parse_generation and parse_input (infer_inputs.py) are re-exported:
# this module is where their callers have found them.
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
