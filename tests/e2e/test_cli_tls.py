"""The command-line clients' --ca/--cert/--key (#16 item 3) against a real gateway serving mutual TLS:
`heddle list` and `heddle infer` connect with them, fail cleanly without, and a bad file is one line."""

from __future__ import annotations

import pytest
from pki_fixtures import Pki, pki  # noqa: F401  (fixtures are found by name)
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.server.cli import main
from heddle.server.config.builder import document, python_device


def _config(pki: Pki):
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    return parse_test_document(document(server={"tls": tls}, devices=[python_device("py0")],
                                        models=[py_model("a", "stage_fns:tail")], pipelines=[chain("p", ["a"])]))


@pytest.mark.slow
def test_clients_connect_over_mutual_tls_with_the_options(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(_config(pki)) as running:
        target = f"localhost:{running.server.grpc_port}"
        tls = ["--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        assert main(["list", "pipelines", "--target", target, *tls]) == 0
        assert "p" in capsys.readouterr().out
        assert main(["infer", "p", "--input", "x=[1.0, 2.0]", "--json", "--target", target, *tls]) == 0
        assert '"y"' in capsys.readouterr().out
        assert main(["list", "pipelines", "--target", target]) == 1  # plain text to a TLS port
        assert main(["list", "pipelines", "--target", target, "--ca", str(pki.ca)]) == 1  # no client cert
        capsys.readouterr()
        assert main(["list", "pipelines", "--target", target, "--ca", "/nonexistent/ca.pem"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot read the CA certificate (--ca) /nonexistent/ca.pem" in err
        assert main(["list", "pipelines", "--target", target, "--ca", str(pki.ca), "--cert", str(pki.client_cert)]) == 2
        assert "--cert and --key go together" in capsys.readouterr().err
