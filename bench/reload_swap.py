"""Benchmark: latency while a config reload swaps models under load (issue #17's "p99 during the swap").

An in-process gateway on a config file with an ONNX model (`scale`, a 256-wide 4-layer MLP rewritten
in place by the reload), a python model kept, and one removed; 8 client threads call the two
kept pipelines in a loop. Latency is bucketed by when each request was sent: the window before the
reload, the reload itself (from the call until it answers), and after. The reference is the same
run's before-window. Failures are counted by status (only NOT_FOUND for the removed pipeline is
expected). Writes JSON (--out, default bench/results/<date>/reload_swap.json). A benchmark, not a test.

    .venv/bin/python -m bench.reload_swap --reloads 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # stage_fns: the python stage the config names


def _mlp(path: Path, seed: int, width: int = 256, depth: int = 4) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) / 16, f"w{i}")
        inits.append(w)
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])
    model = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, path)


def _write(path: Path, models: list[str]) -> None:
    from heddle.server.config.builder import (
        document,
        onnx_device,
        onnx_model,
        pipeline,
        python_device,
        python_model,
        stage,
        tensor,
        to_toml,
    )

    tables = {"scale": onnx_model("scale", "scale.onnx"),
              **{m: python_model(m, "stage_fns:tail", [tensor("x")], [tensor("y")]) for m in ("keep", "gone", "fresh")}}
    shape = {"scale": (-1, 256)}
    doc = document(devices=[onnx_device("cpu0"), python_device("py0", slots=2)], models=[tables[m] for m in models],
                   pipelines=[pipeline(f"p_{m}", [tensor("x", shape=shape.get(m, (-1,)))], {"y": "s.y"},
                                       [stage("s", m, x="input:x")]) for m in models])
    path.write_text(to_toml(doc))


def _p(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / dt.date.today().isoformat()
                        / "reload_swap.json")
    args = parser.parse_args(argv)
    from server_fixtures import running_server  # a gateway on its own loop thread, in process

    from heddle.clients.errors import HeddleError
    from heddle.server.cli import main as heddle
    from heddle.server.config.load import load_config

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        _mlp(files / "scale.onnx", seed=0)
        _write(files / "heddle.toml", ["scale", "keep", "gone"])
        config = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
        with running_server(config) as running:
            for r in range(args.reloads):
                rounds.append(_round(running, files, r, args, HeddleError, heddle))
                print(json.dumps(rounds[-1]["summary"]), flush=True)
    result = {"bench": "reload_swap", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "clients": args.clients, "window_s": args.window_s, "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def _round(running, files: Path, r: int, args, HeddleError, heddle) -> dict:
    """One reload under load: the model file rewritten, `fresh` and `gone` swapped in turn."""
    inputs = {"p_scale": np.ones((1, 256), np.float32), "p_keep": np.ones(4, np.float32)}
    sent: list[tuple[float, float, str, str]] = []  # (sent at, latency ms, pipeline, status)
    stop = threading.Event()
    names = ["p_scale", "p_keep"] * (args.clients // 2) + ["p_scale"] * (args.clients % 2)
    removed, added = ("gone", "fresh") if r % 2 == 0 else ("fresh", "gone")

    def load(name: str) -> None:
        with running.client() as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    client.infer(name, {"x": inputs[name]}, timeout_s=30)
                    status = "OK"
                except HeddleError as exc:
                    status = exc.code().name
                sent.append((t0, (time.monotonic() - t0) * 1e3, name, status))

    threads = [threading.Thread(target=load, args=(n,)) for n in names]
    for t in threads:
        t.start()
    time.sleep(args.window_s)
    _mlp(files / "scale.onnx", seed=r + 1)
    _write(files / "heddle.toml", ["scale", "keep", added])
    t_reload = time.monotonic()
    code = heddle(["reload", "--target", running.target])
    t_done = time.monotonic()
    time.sleep(args.window_s)
    stop.set()
    for t in threads:
        t.join()
    windows = {"before": (t_reload - args.window_s, t_reload), "during": (t_reload, t_done),
               "after": (t_done, t_done + args.window_s)}
    summary: dict = {"round": r, "reload_exit": code, "reload_ms": round((t_done - t_reload) * 1e3, 1)}
    for label, (lo, hi) in windows.items():
        ok = [ms for t0, ms, _, st in sent if lo <= t0 < hi and st == "OK"]
        summary[label] = {"requests": len(ok), "p50_ms": _p(ok, 50), "p99_ms": _p(ok, 99)}
    summary["failed"] = sorted({f"{n}:{st}" for _, _, n, st in sent if st != "OK"})
    return {"summary": summary}


if __name__ == "__main__":
    sys.exit(main())
