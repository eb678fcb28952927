"""The committed heddle.v1 stubs are exactly what the pinned grpcio-tools generates from the proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("heddle_pb2.py", "heddle_pb2.pyi", "heddle_pb2_grpc.py")


def test_regenerating_stubs_changes_nothing(tmp_path):
    """protoc over proto/heddle/v1/heddle.proto reproduces the committed files byte for byte."""
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(ROOT / "proto/heddle/v1/heddle.proto")],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "heddle/v1" / name).read_text()
        committed = (ROOT / "proto/heddle/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto`"


def test_stubs_import_under_the_heddle_namespace():
    """The proto package is the Python path: heddle.v1 exposes the Gateway service."""
    from heddle.v1 import heddle_pb2, heddle_pb2_grpc

    assert heddle_pb2.DESCRIPTOR.package == "heddle.v1"
    assert hasattr(heddle_pb2_grpc, "GatewayStub")
