#!/usr/bin/env bash
# Regenerates the committed heddle.v1 stubs; tests/e2e/test_proto_stubs.py checks they are current.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-proto}"
python -m grpc_tools.protoc -Iproto --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" proto/heddle/v1/heddle.proto
