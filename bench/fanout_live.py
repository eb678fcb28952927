"""The fan-out demo (#14) live against its replay: the embedded default's detect_classify pipeline
(detector -> crop each confident cell -> the CNN per region as a map stage -> gather) served by a
real `heddle serve` that records a trace, under Poisson arrivals of random images; then the same
trace replayed by `heddle simulate --trace --profile --platform local` with run times measured in
that very run (`heddle profile --from-trace`): the simulator's prediction of the request latency
beside what the server recorded, as a ratio (the acceptance asks for 0.75..1.25).

    python -m bench.fanout_live [--rate-hz 6] [--duration-s 20] [--policy priority]

Writes bench/results/<date>/fanout_live.json (live and simulated mean/p50/p99 latency, region
counts, element runs per device, the ratios).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import HEDDLE, ROOT, free_port, machine_info, results_path, save_report, server_process, summarize
from heddle.clients.client import HeddleClient

PIPELINE = "detect_classify"


def send_load(target: str, rate_hz: float, duration_s: float, seed: int) -> list[dict[str, Any]]:
    """Poisson arrivals of random 64x64 images for duration_s, each its own request, open loop."""
    rng, images = random.Random(seed), np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    with HeddleClient(target) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        start, t, futures = time.monotonic(), 0.0, []
        while t < duration_s:
            time.sleep(max(0.0, start + t - time.monotonic()))
            image = images.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
            futures.append(pool.submit(_one, client, image))
            t += rng.expovariate(rate_hz)
        records = [f.result() for f in futures]
    return records


def _one(client: HeddleClient, image: np.ndarray) -> dict[str, Any]:
    t0 = time.monotonic()
    result = client.infer(PIPELINE, {"image": image})
    elements = [s for s in result.stages if s.stage.startswith("classify[")]
    return {"client_ms": (time.monotonic() - t0) * 1e3, "server_ms": result.total_ms, "regions": len(elements),
            "devices": sorted({s.device for s in elements})}


def unbatched_config(work: Path) -> Path:
    """The embedded default as a file, its models' dynamic batching off (max_batch dropped)."""
    from heddle.server.config.builder import to_toml
    from heddle.server.config.default import default_config_document

    doc = default_config_document()
    doc["models"] = [{k: v for k, v in m.items() if k != "max_batch" or m.get("kind") == "llm"} for m in doc["models"]]
    path = work / "unbatched.toml"
    path.write_text(to_toml(doc))
    return path


def replay(trace: Path, work: Path, policy: str) -> dict[str, Any]:
    profile = work / "profile.json"
    subprocess.run([*HEDDLE, "profile", "--from-trace", str(trace), "--out", str(profile)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    out = work / "sim.json"
    subprocess.run([*HEDDLE, "simulate", "--trace", str(trace), "--profile", str(profile), "--platform", "local",
                    "--policy", policy, "--json", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-hz", type=float, default=6.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--policy", default="priority")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-batching", action="store_true",
                   help="serve the embedded default with every model's max_batch removed (no dynamic batching)")
    p.add_argument("--out", help="JSON path (default bench/results/<date>/fanout_live.json)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fanout_live-"))
    trace, grpc_port = work / "trace.jsonl", free_port()
    target = f"127.0.0.1:{grpc_port}"
    config = ["--config", str(unbatched_config(work))] if args.no_batching else []
    cmd = [*HEDDLE, "serve", *config, "--grpc-port", str(grpc_port), "--metrics-port", str(free_port()),
           "--http-port", "0", "--policy", args.policy, "--trace", str(trace), "--log-level", "warning"]
    with server_process(cmd, target, work / "server.log"):
        with HeddleClient(target) as client:  # warm-up: every session run once (replayed like the rest)
            for _ in range(5):
                _one(client, np.random.default_rng(7).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
        live = send_load(target, args.rate_hz, args.duration_s, args.seed)
    sim = replay(trace, work, args.policy)
    report = figures(args, live, sim, work)
    out = Path(args.out) if args.out else results_path("fanout_live.json")
    save_report(report, out)
    print(json.dumps(report["compare"], indent=2))
    print(f"wrote {out}")


def figures(args: argparse.Namespace, live: list[dict[str, Any]], sim: dict[str, Any], work: Path) -> dict[str, Any]:
    recorded, predicted = sim["recorded"]["per_source"][PIPELINE], sim["results"][0]["per_source"][PIPELINE]
    compare = {key: predicted[key] / recorded[key] for key in ("mean_ms", "p50_ms", "p99_ms")}
    regions = [r["regions"] for r in live]
    return {
        "benchmark": "fanout_live", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "params": vars(args), "requests": len(live),
        "regions": {"mean": float(np.mean(regions)), "max": max(regions), "zero": regions.count(0),
                    "on_two_devices": sum(len(r["devices"]) > 1 for r in live)},
        "live_client": summarize([r["client_ms"] for r in live]),
        "live_server": summarize([r["server_ms"] for r in live]),
        "recorded": recorded, "simulated": predicted, "compare": {"simulated/recorded": compare},
        "files": {"work": str(work)},
    }


if __name__ == "__main__":
    main()
