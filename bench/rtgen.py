"""Benchmark (issue 6 acceptance): a real-time DNN stream with deadlines beside long LLM generations.

One run, on one accelerator that both share (an ONNX Runtime device pinned to one core), per policy:
  dnn_alone   a periodic high-priority frame stream (preprocess -> CNN -> postprocess, a deadline)
  mixed       the same stream while --llm-streams clients each generate --llm-tokens tokens in a
              closed loop (priority 1, no deadline, streamed with InferStream)
and once, llm_alone (the generations with nothing else) for the LLM's own tokens/s.
Two servers are measured in turn: `token_steps`, where each prefill and each decode step is a
schedulable unit (the LLM can be frozen between tokens), and `whole_generation`
(step_scheduling = false: one dispatch per generation), the baseline that shows what the
token-level units buy.

Figures: DNN deadline violation rate (a violation is a non-OK answer or deadline_missed) and
p50/p99 of the server's total_ms; LLM time to first token (client side, from sending the request),
tokens/s per generation (after the first token) and aggregate tokens/s over the phase, failed
generations. Checks: in token_steps, for every policy that ranks the DNN first, mixed DVR within 2
points of dnn_alone, and the LLM slower than alone but not failing.

    .venv/bin/python -m bench.rtgen                          # all policies, ~5 minutes
    .venv/bin/python -m bench.rtgen --policy fcfs --policy twill --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import harness
from bench.harness import free_port, machine_info, pinned_devices, results_path, save_report, server_process
from heddle.backends.zoo.build import build_model
from heddle.clients.tensors import to_tensor
from heddle.server.config.builder import document, onnx_model, pipeline, stage, tensor
from heddle.server.config.default import FRAME_OPS
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

POLICIES = ("fcfs", "priority", "edf", "least_slack", "sjf", "dream", "twill")
# Policies that put a deadline-carrying priority-4 stream before best-effort priority-1 work.
DNN_FIRST = ("priority", "edf", "least_slack", "twill")
MODES = {"token_steps": True, "whole_generation": False}


def write_config(work: Path, cnn: Path, llm: Path, step_scheduling: bool, grpc_port: int,
                 metrics_port: int) -> Path:
    """One pinned CPU device (acc0) and py0; the frame chain and the LLM, its decode steps
    scheduled one by one or the whole generation as one run."""
    image, ids = tensor("image", "UINT8", (-1, 64, 64, 3)), (1, -1)
    frames = pipeline("frames", [image], {"label": "post.label"}, [
        stage("pre", "preprocess", image="input:image"), stage("cnn", "cnn", image="pre.image"),
        stage("post", "postprocess", logits="cnn.logits")])
    chat = pipeline("chat", [tensor("input_ids", "INT64", ids)], {"output_ids": "llm.output_ids"},
                    [stage("llm", "llm", input_ids="input:input_ids")])
    llm_model = onnx_model("llm", str(llm), kind="llm", max_positions=1024, max_batch=8,
                           step_scheduling=step_scheduling)
    server = {"policy": "fcfs", "grpc_port": grpc_port, "metrics_port": metrics_port, "log_level": "warning"}
    doc = document(server=server, devices=pinned_devices([0], prefix="acc"), pipelines=[frames, chat],
                   models=[onnx_model("cnn", str(cnn)), llm_model, *FRAME_OPS])
    return harness.write_config(work / f"rtgen-{'steps' if step_scheduling else 'whole'}.toml", doc)


async def dnn_stream(target: str, args: argparse.Namespace, stop_s: float) -> list[dict[str, Any]]:
    """Open loop: one frame every 1/rate s until stop_s; each answer recorded as it comes."""
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    request = pb.InferRequest(pipeline="frames", inputs=[to_tensor("image", image)], priority=4,
                              deadline_ms=args.dnn_deadline_ms)
    records: list[dict[str, Any]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayStub(channel)

        async def one() -> None:
            try:
                reply = await stub.Infer(request, timeout=30)
                records.append({"ok": not reply.deadline_missed, "total_ms": reply.total_ms})
            except grpc.RpcError as err:
                records.append({"ok": False, "total_ms": None, "code": err.code().name})

        tasks, period_s, next_s = [], 1.0 / args.dnn_rate_hz, time.monotonic()
        while next_s < stop_s:
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))
            tasks.append(asyncio.ensure_future(one()))
            next_s += period_s
        await asyncio.gather(*tasks)
    return records


async def llm_client(target: str, args: argparse.Namespace, stop_s: float, seed: int) -> list[dict[str, Any]]:
    """Closed loop: stream generations one after another until stop_s (the last one cut there)."""
    rng = np.random.default_rng(seed)
    records = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        while time.monotonic() < stop_s:
            prompt = rng.integers(0, 256, (1, args.llm_prompt), dtype=np.int64)
            request = pb.InferRequest(pipeline="chat", inputs=[to_tensor("input_ids", prompt)], priority=1,
                                      generation=pb.GenerationOptions(max_new_tokens=args.llm_tokens))
            records.append(await _generation(stub, request, stop_s))
    return records


async def _generation(stub, request: pb.InferRequest, stop_s: float) -> dict[str, Any]:
    sent = time.monotonic()
    record: dict[str, Any] = {"tokens": 0, "ttft_s": None, "end_s": None, "status": "OK", "cut": False}
    call = stub.InferStream(request)

    async def consume() -> None:
        async for event in call:
            if event.HasField("tokens"):
                now = time.monotonic()
                if record["ttft_s"] is None:
                    record["ttft_s"], record["first_s"] = now - sent, now
                record["tokens"] += len(event.tokens.token_ids)
                record["last_s"] = now

    try:
        await asyncio.wait_for(consume(), timeout=max(0.001, stop_s - sent))
    except asyncio.TimeoutError:
        record["cut"] = True  # the phase ended first: its tokens count, its rate does not
    except grpc.RpcError as err:
        record["status"] = err.code().name
    record["end_s"] = time.monotonic()
    return record


async def phase(target: str, args: argparse.Namespace, dnn: bool, llm: bool, raw: bool = False) -> dict[str, Any]:
    """One phase of --duration-s: figures, or (raw) the records they are made from."""
    start = time.monotonic()
    stop_s = start + args.duration_s
    jobs = [dnn_stream(target, args, stop_s)] if dnn else []
    jobs += [llm_client(target, args, stop_s, seed) for seed in range(args.llm_streams)] if llm else []
    results = await asyncio.gather(*jobs)
    await settle(target)
    out: dict[str, Any] = {}
    if dnn:
        out["dnn"] = results[0] if raw else dnn_figures(results[0])
    if llm:
        records = [r for rs in results[int(dnn):] for r in rs]
        out["llm"] = records if raw else llm_figures(records, args.duration_s)
    return out


async def settle(target: str, timeout_s: float = 60.0) -> None:
    """Wait until the server holds no work: a generation cut at a phase's end may still run (a
    whole-generation dispatch cannot stop), and must not leak into the next phase."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            devices = (await stub.ListDevices(pb.ListDevicesRequest())).devices
            if all(d.running == 0 and d.queued == 0 for d in devices):
                return
            await asyncio.sleep(0.02)
    raise TimeoutError(f"{target} still busy {timeout_s} s after a phase")


# ---- figures ------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def dnn_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_ms"] for r in records if r["total_ms"] is not None]
    return {"requests": len(records), "violations": sum(not r["ok"] for r in records),
            "dvr": sum(not r["ok"] for r in records) / max(1, len(records)),
            "p50_ms": _pct(totals, 50), "p99_ms": _pct(totals, 99)}


def llm_figures(records: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    done = [r for r in records if r["status"] == "OK" and not r["cut"]]
    ttft = [r["ttft_s"] * 1e3 for r in records if r["ttft_s"] is not None]
    rates = [(r["tokens"] - 1) / (r["last_s"] - r["first_s"]) for r in done
             if r["tokens"] > 1 and r["last_s"] > r["first_s"]]
    return {"generations": len(records), "completed": len(done), "cut_at_phase_end": sum(r["cut"] for r in records),
            "failed": sum(r["status"] != "OK" for r in records),
            "ttft_p50_ms": _pct(ttft, 50), "ttft_p95_ms": _pct(ttft, 95),
            "tps_per_generation": float(np.mean(rates)) if rates else None,
            "tps_aggregate": sum(r["tokens"] for r in records) / duration_s}


# ---- the run ------------------------------------------------------------------------------------
async def measure_server(target: str, args: argparse.Namespace) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        admin = pb_grpc.AdminStub(channel)
        await admin.SetPolicy(pb.SetPolicyRequest(policy="priority"))
        await phase(target, args, dnn=True, llm=True)  # warm-up: profiles learn both models
        alone_llm = [r for _ in range(args.rounds)
                     for r in (await phase(target, args, dnn=False, llm=True, raw=True))["llm"]]
        out: dict[str, Any] = {"llm_alone": llm_figures(alone_llm, args.duration_s * args.rounds), "policies": {}}
        for policy in args.policy:
            await admin.SetPolicy(pb.SetPolicyRequest(policy=policy))
            # Alone and mixed interleaved in short rounds: load from outside the benchmark (a
            # shared box) then falls on both alike instead of on whichever ran during it.
            alone_rounds, mixed_rounds = [], []
            for _ in range(args.rounds):
                alone_rounds.append(await phase(target, args, dnn=True, llm=False, raw=True))
                mixed_rounds.append(await phase(target, args, dnn=True, llm=True, raw=True))
            alone = dnn_figures([r for x in alone_rounds for r in x["dnn"]])
            mixed = {"dnn": dnn_figures([r for x in mixed_rounds for r in x["dnn"]]),
                     "llm": llm_figures([r for x in mixed_rounds for r in x["llm"]], args.duration_s * args.rounds)}
            out["policies"][policy] = {"dnn_alone": alone, "mixed": mixed,
                                       "dvr_increase_points": 100 * (mixed["dnn"]["dvr"] - alone["dvr"])}
            print(f"  {policy:12s} DVR alone {alone['dvr']:6.1%} mixed {mixed['dnn']['dvr']:6.1%}  "
                  f"TTFT p50 {mixed['llm']['ttft_p50_ms'] or float('nan'):7.1f} ms  "
                  f"TPS {mixed['llm']['tps_aggregate']:7.1f}  failed {mixed['llm']['failed']}", flush=True)
    return out


def checks(results: dict[str, Any]) -> dict[str, Any]:
    steps = results["token_steps"]
    alone_tps = steps["llm_alone"]["tps_aggregate"]
    out = {}
    for policy, r in steps["policies"].items():
        if policy not in DNN_FIRST:
            continue
        llm = r["mixed"]["llm"]
        out[policy] = {"dvr_within_2_points": r["dvr_increase_points"] <= 2.0,
                       "llm_slower_not_failing": llm["tps_aggregate"] < alone_tps and llm["failed"] == 0}
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = work / "models"
    cnn = build_model("cnn", cache)
    llm = build_model("llm", cache, max_positions=1024)
    results = {}
    for mode in args.mode:
        grpc_port, metrics_port = free_port(), free_port()
        config = write_config(work, cnn, llm, MODES[mode], grpc_port, metrics_port)
        cmd = [sys.executable, "-m", "heddle.server.cli", "serve", "--config", str(config), "--http-port", "0"]
        print(f"{mode}:", flush=True)
        with server_process(cmd, f"127.0.0.1:{grpc_port}", work / f"{mode}.log"):
            results[mode] = asyncio.run(measure_server(f"127.0.0.1:{grpc_port}", args))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", action="append", choices=POLICIES, help="repeatable; default: all")
    p.add_argument("--mode", action="append", choices=tuple(MODES), help="repeatable; default: both")
    p.add_argument("--duration-s", type=float, default=2.5, help="length of each phase")
    p.add_argument("--rounds", type=int, default=4, help="alone/mixed phase pairs per policy")
    p.add_argument("--dnn-rate-hz", type=float, default=20.0)
    p.add_argument("--dnn-deadline-ms", type=float, default=40.0)
    p.add_argument("--llm-streams", type=int, default=2)
    p.add_argument("--llm-tokens", type=int, default=256)
    p.add_argument("--llm-prompt", type=int, default=16)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.policy = args.policy or list(POLICIES)
    args.mode = args.mode or list(MODES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_path("rtgen.json", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / "rtgen-work"
    work.mkdir(exist_ok=True)
    load_before = os.getloadavg()  # a shared box: say how busy it was
    results = run(args, work)
    report = {"params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "results": results,
              "checks": checks(results) if "token_steps" in results else {}}
    print(json.dumps(report["checks"], indent=2))
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
