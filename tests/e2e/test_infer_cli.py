"""`heddle infer` and `heddle list` against a small real gRPC server (tests/client_fixtures.py):
generated and given inputs, tables and JSON, streamed events, and the errors a user sees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from client_fixtures import PIPELINE, gateway  # noqa: F401 (gateway is a fixture)

from heddle.clients.infer_cli import add_infer_parser, add_list_parser, generate_input


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="heddle")
    sub = parser.add_subparsers(dest="command", required=True)
    add_infer_parser(sub)
    add_list_parser(sub)
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    return args.func(args)


class TestInferCli:
    def test_generated_inputs_table(self, gateway, capsys) -> None:
        """Without --input, every declared input is generated and the outputs and stages are tabled."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--priority", "2"]) == 0
        out = capsys.readouterr().out
        assert "pipeline compute  request generated-1  priority 2" in out
        lines = out.splitlines()
        assert any(line.split()[:4] == ["x", "FP32", "[1,", "4]"] for line in lines)
        assert any(line.split()[:4] == ["ids", "INT64", "[1,", "16]"] for line in lines)
        assert any(line.split()[:3] == ["flag", "BOOL", "[3]"] for line in lines)
        assert any(line.split()[:3] == ["text", "BYTES", "[1]"] for line in lines)
        assert "stage   model  device  status  queue ms  compute ms  start ms  end ms  error" in out
        assert any(line.split()[:4] == ["post", "m", "cpu0", "FAILED"] for line in lines)
        assert lines[-1] == "total 1.000 ms"

    def test_json_matches_the_seeded_generator(self, gateway, capsys) -> None:
        """--json prints one document whose outputs are the server's function of the seeded inputs."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--json", "--seed", "5"]) == 0
        doc = json.loads(capsys.readouterr().out)
        rng = np.random.default_rng(5)
        expected = {t.name: generate_input(t, rng) for t in PIPELINE.inputs}
        outputs = {o["name"]: o for o in doc["outputs"]}
        assert outputs["x"]["shape"] == [1, 4] and outputs["ids"]["shape"] == [1, 16]
        np.testing.assert_allclose(outputs["x"]["values"], (expected["x"] * 2).ravel(), rtol=1e-6)
        assert all(1 <= v <= 100 for v in outputs["ids"]["values"])
        assert outputs["ids"]["values"] == (expected["ids"] + 1).ravel().tolist()
        assert doc["stages"][-1]["error"] == "post exploded" and doc["priority"] == 0

    def test_explicit_inputs(self, gateway, capsys, tmp_path: Path) -> None:
        """JSON literals take the declared datatype, and .npy files are sent as saved."""
        target, _ = gateway
        np.save(tmp_path / "ids.npy", np.array([[7, 8]], dtype=np.int64))
        argv = ["infer", "compute", "--target", target, "--json", "--input", "x=[[1, 2, 3, 4]]",
                "--input", f"ids={tmp_path / 'ids.npy'}", "--input", 'text=["hi"]',
                "--output", "x", "--output", "ids", "--output", "text"]
        assert _run(argv) == 0
        outputs = {o["name"]: o for o in json.loads(capsys.readouterr().out)["outputs"]}
        assert (outputs["x"]["datatype"], outputs["x"]["values"]) == ("FP32", [2, 4, 6, 8])
        assert outputs["ids"]["values"] == [8, 9] and outputs["text"]["values"] == ["ih"]

    def test_stream_prints_each_stage(self, gateway, capsys) -> None:
        """--stream prints a line per finished stage before the result table."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--stream"]) == 0
        lines = capsys.readouterr().out.splitlines()
        stage_lines = [i for i, line in enumerate(lines) if line.startswith("stage done: ")]
        assert len(stage_lines) == 5 and stage_lines == list(range(5))
        assert "error=post exploded" in lines[4]
        assert lines[6].startswith("pipeline compute")

    def test_stream_json_lines(self, gateway, capsys) -> None:
        """--stream --json prints one JSON object per event, the result last."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--stream", "--json"]) == 0
        docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [d["event"] for d in docs] == ["stage_done"] * 5 + ["result"]

    def test_rpc_error(self, gateway, capsys) -> None:
        """An RPC error prints `error: CODE: details` to stderr and returns 1."""
        target, _ = gateway
        assert _run(["infer", "nope", "--target", target]) == 1
        assert capsys.readouterr().err == "error: NOT_FOUND: unknown pipeline 'nope'\n"

    def test_bad_input_argument(self, gateway, capsys) -> None:
        """An --input that is neither NAME=FILE.npy nor NAME=JSON returns 2 with a message."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--input", "x=[1,"]) == 2
        assert capsys.readouterr().err.startswith("error: --input x: '[1,' is neither")

    def test_list(self, gateway, capsys) -> None:
        """`list` prints a table, or JSON with integer shapes."""
        target, _ = gateway
        assert _run(["list", "devices", "--target", target]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["device", "kind", "backend", "providers", "slots", "running",
                                    "queued", "healthy"]
        assert lines[1].split() == ["cpu0", "cpu", "onnxruntime", "CPUExecutionProvider", "2", "1",
                                    "3", "True"]
        assert _run(["list", "pipelines", "--target", target, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["pipelines"][0]["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
