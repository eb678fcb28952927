"""Benchmark: Triton's own load generator, perf_analyzer, against heddle's KServe v2 gRPC port (and a real Triton).

perf_analyzer 2.51 is the C++ binary inside the `tritonclient==2.51.0` manylinux wheel (the PyPI
`perf-analyzer` package is an empty placeholder). `obtain_perf_analyzer` downloads that wheel once with
pip into a cache dir, extracts the binary and links the two libraries it needs (libb64, libcudart)
from the `nvidia_pytriton.libs` folder of the nvidia-pytriton wheel into a lib dir for LD_LIBRARY_PATH.

Each model runs in concurrency mode (`--concurrency-range 1:2 -p 2000 --stability-percentage 50` by
default: stable on 2 cores); dynamic dims get `--shape` from the model's metadata (-1 -> --dynamic-dim).
The parsed CSV (throughput, p50..p99, client/server split; microseconds) goes to JSON. `--triton URL`
runs the same command against a real Triton server and keeps both, with heddle/triton ratios.

    .venv/bin/python -m bench.perf_analyzer                            # starts `heddle serve`, model cnn
    .venv/bin/python -m bench.perf_analyzer --model cnn --model multihead --heddle 127.0.0.1:8001
    .venv/bin/python -m bench.perf_analyzer --triton 127.0.0.1:9001 --triton-model cnn
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.grpc as tgrpc

from bench.harness import free_port, machine_info, results_path, save_report, server_process

__all__ = ["PerfAnalyzer", "main", "obtain_perf_analyzer", "parse_csv", "run_perf_analyzer"]

PA_VERSION = "2.51.0"
_CSV_KEYS = {"Concurrency": "concurrency", "Inferences/Second": "throughput_infer_per_s",
             "Request Rate": "request_rate_per_s"}


@dataclass(frozen=True, slots=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        paths = [str(self.lib_dir), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], env=self.env(), capture_output=True,
                             text=True, timeout=30)
        return (out.stdout + out.stderr).strip()


def _cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("HEDDLE_CACHE_DIR", "~/.cache/heddle")))


def _pytriton_libs() -> Path:
    """The folder of shared libraries bundled by the nvidia-pytriton wheel (auditwheel-renamed)."""
    for entry in sys.path:
        candidate = Path(entry) / "nvidia_pytriton.libs"
        if candidate.is_dir():
            return candidate
    raise RuntimeError("nvidia_pytriton.libs not found: install nvidia-pytriton (the test extra)")


def _missing_sonames(binary: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def _extract_binary(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist() if n.endswith("/bin/perf_analyzer")]
        if not members:
            raise RuntimeError(f"{wheel.name} holds no bin/perf_analyzer")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(z.read(members[0]))  # today: tritonclient-2.51.0.data/data/bin/perf_analyzer
    dest.chmod(0o755)


def _link_libraries(pa: PerfAnalyzer) -> None:
    """For each soname ldd cannot find (libb64.so.0d, libcudart.so.12), link its renamed copy."""
    libs = _pytriton_libs()
    pa.lib_dir.mkdir(parents=True, exist_ok=True)
    for soname in _missing_sonames(pa.binary, pa.env()):
        stem, _, suffix = soname.partition(".so")  # libcudart, .12
        found = sorted(glob.glob(str(libs / f"{stem}-*.so{suffix}*")))
        if not found:
            raise RuntimeError(f"perf_analyzer needs {soname}, which {libs} does not hold")
        link = pa.lib_dir / soname
        link.unlink(missing_ok=True)
        link.symlink_to(found[0])
    still = _missing_sonames(pa.binary, pa.env())
    if still:
        raise RuntimeError(f"perf_analyzer still misses {still}")


def obtain_perf_analyzer(cache_dir: Path | None = None, version: str = PA_VERSION,
                         binary: Path | None = None) -> PerfAnalyzer:
    """perf_analyzer from the tritonclient wheel, downloaded with pip once into cache_dir
    (or `binary`, an already extracted one), with its libraries linked."""
    root = (cache_dir or _cache_root()) / f"perf_analyzer-{version}"
    pa = PerfAnalyzer(binary or root / "bin" / "perf_analyzer", root / "lib")
    if not pa.binary.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            f"tritonclient=={version}", "-d", tmp], check=True)
            wheels = sorted(Path(tmp).glob("tritonclient-*manylinux*.whl"))
            if not wheels:
                raise RuntimeError(f"pip found no manylinux tritonclient {version} wheel for this machine")
            _extract_binary(wheels[0], pa.binary)
    _link_libraries(pa)
    return pa


def shape_args(url: str, model: str, dynamic_dim: int, overrides: dict[str, str]) -> list[str]:
    """`--shape NAME:DIMS` for each input with a dynamic dim (-1 -> dynamic_dim); the batch dim of a
    model with max_batch_size > 0 is left out, as perf_analyzer wants."""
    client = tgrpc.InferenceServerClient(url)
    try:
        meta = client.get_model_metadata(model)
        batching = client.get_model_config(model).config.max_batch_size > 0
    finally:
        client.close()
    args = []
    for t in meta.inputs:
        dims = list(t.shape)[1 if batching else 0:]
        if t.name in overrides:
            args += ["--shape", f"{t.name}:{overrides[t.name]}"]
        elif any(d < 0 for d in dims):
            args += ["--shape", f"{t.name}:" + ",".join(str(dynamic_dim if d < 0 else d) for d in dims)]
    return args


def parse_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's -f CSV: one row per concurrency; times are microseconds (keys end in _us)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for name, value in row.items():
                if not name or value in (None, ""):
                    continue
                key = _CSV_KEYS.get(name) or re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + "_us"
                parsed[key] = float(value)
            rows.append(parsed)
    return rows


def run_perf_analyzer(pa: PerfAnalyzer, target: str, url: str, model: str, args: argparse.Namespace,
                      out_dir: Path) -> dict[str, Any]:
    overrides = dict(s.split(":", 1) for s in args.shape)
    csv_path = out_dir / f"{target}-{model}.csv"
    csv_path.unlink(missing_ok=True)  # a previous run's rows must not pass for this one's
    cmd = [str(pa.binary), "-i", "grpc", "-u", url, "-m", model,
           "--concurrency-range", args.concurrency_range, "-p", str(args.measurement_ms),
           "--stability-percentage", str(args.stability_percentage), "-f", str(csv_path),
           *shape_args(url, model, args.dynamic_dim, overrides), *shlex.split(args.extra)]
    print(f"[{target}] {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=pa.env(), capture_output=True, text=True, timeout=args.timeout_s)
    output = proc.stdout + proc.stderr
    run = {"target": target, "url": url, "model": model, "command": cmd, "returncode": proc.returncode,
           "rows": parse_csv(csv_path) if proc.returncode == 0 and csv_path.exists() else [],
           # e.g. "Failed to obtain stable measurement ... for concurrency 2": that row is missing
           "warnings": [line.strip() for line in output.splitlines() if re.search(r"fail|warn|error", line, re.I)],
           "output_tail": output[-4000:]}
    if proc.returncode != 0:
        print(f"[{target}] perf_analyzer failed ({proc.returncode}):\n{output[-4000:]}", file=sys.stderr)
    return run


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """heddle / triton per model and concurrency: throughput and p50/p99 latency."""
    out = []
    heddle = {(r["model"], row["concurrency"]): row for r in runs if r["target"] == "heddle" for row in r["rows"]}
    for r in runs:
        if r["target"] != "triton":
            continue
        for row in r["rows"]:
            mine = heddle.get((r["heddle_model"], row["concurrency"]))
            if mine is None:
                continue
            entry = {"model": r["heddle_model"], "triton_model": r["model"], "concurrency": row["concurrency"]}
            for key in ("throughput_infer_per_s", "p50_latency_us", "p99_latency_us"):
                if row.get(key):
                    entry[key] = mine.get(key, 0.0) / row[key]
            out.append(entry)
    return out


@contextlib.contextmanager
def started_triton(models: list[str], config_path: str | None, max_batch_size: int) -> Iterator[tuple[str, set]]:
    """A real Triton (the nvidia-pytriton binary) serving each requested ONNX model of the heddle config
    as a python-backend model that runs the same ONNX file with onnxruntime; yields (url, models)."""
    from heddle.backends.onnxruntime import read_io_spec
    from heddle.backends.triton.server import TritonServer, write_onnx_python_model
    from heddle.server.config.load import load_config

    config = load_config(config_path)
    served = set()
    with tempfile.TemporaryDirectory(prefix="heddle-pa-triton-") as repo:
        for name in models:
            spec = config.models.get(name)
            if spec is None or spec.backend != "onnxruntime" or name in config.pipelines:
                print(f"[triton] skipping {name!r}: only single ONNX models are put on Triton here")
                continue
            inputs, outputs = read_io_spec(spec.artifact)
            write_onnx_python_model(repo, name, spec.artifact, inputs, outputs, max_batch_size=max_batch_size)
            served.add(name)
        with TritonServer(repo) as server:
            yield server.grpc_url, served


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", help="model or pipeline name (repeatable; default cnn)")
    p.add_argument("--heddle", help="host:port of a running heddle; default: start `heddle serve`")
    p.add_argument("--config", help="config for the heddle started here (default: the embedded one)")
    p.add_argument("--triton", help="host:port of a Triton server to run the same command against")
    p.add_argument("--triton-model", help="the model's name on Triton (default: the same name)")
    p.add_argument("--start-triton", action="store_true",
                   help="start a real Triton serving the requested ONNX models (python backend + onnxruntime)")
    p.add_argument("--triton-max-batch-size", type=int, default=0,
                   help="max_batch_size of the models --start-triton writes (0 = no batching, like heddle)")
    p.add_argument("--concurrency-range", default="1:2")
    p.add_argument("--measurement-ms", type=int, default=2000)
    p.add_argument("--stability-percentage", type=int, default=50)
    p.add_argument("--dynamic-dim", type=int, default=1, help="value for -1 dims in --shape")
    p.add_argument("--shape", action="append", default=[], help="NAME:DIMS, overrides the derived shape")
    p.add_argument("--extra", default="", help="more perf_analyzer arguments, one shell-quoted string")
    p.add_argument("--perf-analyzer", help="an extracted perf_analyzer binary to use instead of the cached download")
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def _run_all(pa: PerfAnalyzer, heddle_url: str, args: argparse.Namespace, out_dir: Path,
             on_triton: set | None = None) -> list[dict]:
    """heddle, then Triton, per model (never at once: they would share the CPU)."""
    runs = []
    for model in args.model:
        runs.append(run_perf_analyzer(pa, "heddle", heddle_url, model, args, out_dir))
        if args.triton and (on_triton is None or model in on_triton):
            run = run_perf_analyzer(pa, "triton", args.triton, args.triton_model or model, args, out_dir)
            runs.append({**run, "heddle_model": model})
    return runs


def _run_heddle(pa: PerfAnalyzer, args: argparse.Namespace, out: Path, on_triton: set | None) -> list[dict]:
    """Against --heddle, or a `heddle serve` started here for the duration."""
    if args.heddle:
        return _run_all(pa, args.heddle, args, out.parent, on_triton)
    port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "heddle.server.cli", "serve", "--grpc-port", str(port),
           "--metrics-port", str(metrics_port), "--http-port", "0", *(["--config", args.config] if args.config else [])]
    with server_process(cmd, f"127.0.0.1:{port}", out.parent / "perf_analyzer-heddle.log"):
        return _run_all(pa, f"127.0.0.1:{port}", args, out.parent, on_triton)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    args.model = args.model or ["cnn"]
    pa = obtain_perf_analyzer(binary=Path(args.perf_analyzer) if args.perf_analyzer else None)
    out = results_path("perf_analyzer.json", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        on_triton = None
        if args.start_triton:
            args.triton, on_triton = stack.enter_context(
                started_triton(args.model, args.config, args.triton_max_batch_size))
        runs = _run_heddle(pa, args, out, on_triton)
    report = {"benchmark": "perf_analyzer", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "perf_analyzer": pa.version(), "machine": machine_info(), "runs": runs, "ratios": ratios(runs)}
    for r in runs:
        for row in r["rows"]:
            print(f"{r['target']:>6} {r['model']:<12} c={row['concurrency']:.0f} "
                  f"{row['throughput_infer_per_s']:8.1f} infer/s  p50 {row.get('p50_latency_us', 0) / 1e3:6.2f} ms"
                  f"  p99 {row.get('p99_latency_us', 0) / 1e3:6.2f} ms")
    save_report(report, out)
    return 0 if all(r["returncode"] == 0 and r["rows"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
