"""The CLIs' HTTP targets (#16 item 3) against a real gateway: `heddle list` and `heddle infer` over the
HTTP port (KServe v2 REST; LLM streams through the OpenAI API) answer what they answer over gRPC, with
heddle's priority scale and deadline, errors as one line and an exit status, and the TLS options."""

from __future__ import annotations

import json

import pytest
from pki_fixtures import Pki, pki  # noqa: F401  (fixtures are found by name)
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain,
    default_config,
    default_server,
    heddle_cache_dir,
    parse_test_document,
    py_model,
    running_server,
)

from heddle.server.cli import main
from heddle.server.config.builder import document, python_device


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _url(running: RunningServer) -> str:
    return f"http://127.0.0.1:{running.server.http_port}"


def test_list_over_http_equals_grpc(default_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Pipelines and models listed from the HTTP port (a URL, or -i http with HOST:PORT) have the names,
    inputs and outputs the gRPC listing has; devices are gRPC only (exit 1 saying so)."""
    port = default_server.server.http_port
    for what in ("pipelines", "models"):
        grpc_side = _json(capsys, ["list", what, "--target", default_server.target])[what]
        # The fan-out demo's stages that take or make lists run inside detect_classify only: KServe
        # (what the HTTP port lists) has no entry of their own for them (kserve_catalog.build_catalog).
        grpc_side = [x for x in grpc_side if x["name"] not in ("crop_regions", "gather_regions")]
        for target in (["--target", _url(default_server)], ["-i", "http", "--target", f"127.0.0.1:{port}"]):
            http_side = _json(capsys, ["list", what, *target])[what]
            assert [(x["name"], x["inputs"], x["outputs"]) for x in http_side] == \
                   sorted((x["name"], x["inputs"], x["outputs"]) for x in grpc_side)
    assert main(["list", "devices", "--target", _url(default_server)]) == 1
    assert "UNIMPLEMENTED: devices are listed by the gRPC API only" in capsys.readouterr().err


def test_infer_over_http_equals_grpc_with_priority_and_deadline(default_server: RunningServer,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The same generated inputs answer the same outputs over both ports; --priority is heddle's scale
    over HTTP too (4 = most urgent comes back as 4), an out-of-range one or an unknown pipeline is one
    error line and exit 1."""
    args = ["infer", "multihead", "--seed", "7", "--priority", "4", "--deadline-ms", "5000"]
    over_grpc = _json(capsys, [*args, "--target", default_server.target])
    over_http = _json(capsys, [*args, "--target", _url(default_server)])
    assert over_http["priority"] == over_grpc["priority"] == 4
    values = {o["name"]: o["values"] for o in over_grpc["outputs"]}
    assert [o["name"] for o in over_http["outputs"]] == list(values)
    for o in over_http["outputs"]:
        assert o["values"] == pytest.approx(values[o["name"]], rel=1e-6)
    assert main(["infer", "multihead", "--priority", "9", "--target", _url(default_server)]) == 1
    assert "INVALID_ARGUMENT: priority 9 is outside 1..4" in capsys.readouterr().err
    assert main(["infer", "nope", "--target", _url(default_server)]) == 1
    assert "NOT_FOUND: unknown model 'nope'" in capsys.readouterr().err


def test_stream_over_http_goes_through_the_openai_api(default_server: RunningServer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`heddle infer chat --stream` over HTTP prints token events as they come and a result whose stage
    counts the generated tokens (the usage of /v1/completions)."""
    argv = ["infer", "chat", "--stream", "--gen", "max_new_tokens=6", "--json", "--target", _url(default_server)]
    assert main(argv) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "result" and events[-1]["stages"][0]["tokens"] == 6
    assert any(e["event"] == "tokens" for e in events[:-1])


@pytest.mark.slow
def test_http_target_over_mutual_tls(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """An https:// target (or -i http with --ca) connects with --ca/--cert/--key and fails without the
    client certificate."""
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    config = parse_test_document(document(server={"tls": tls}, devices=[python_device("py0")],
                                          models=[py_model("a", "stage_fns:tail")], pipelines=[chain("p", ["a"])]))
    with running_server(config) as running:
        port = running.server.http_port
        creds = ["--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        assert main(["list", "pipelines", "--target", f"https://localhost:{port}", *creds]) == 0
        assert "p" in capsys.readouterr().out
        assert main(["infer", "p", "--input", "x=[1.0, 2.0]", "-i", "http", "--target", f"localhost:{port}",
                     *creds, "--json"]) == 0
        assert '"y"' in capsys.readouterr().out
        assert main(["list", "pipelines", "--target", f"https://localhost:{port}", "--ca", str(pki.ca)]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert main(["list", "pipelines", "-i", "grpc", "--target", f"http://localhost:{port}"]) == 2
