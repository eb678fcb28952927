"""Live config reload (server/runtime/reload.py) against a real gateway: under load, a reload that
adds a model, rewrites another's ONNX file and removes a third fails no request but those naming
the removed pipeline after the swap; what cannot change live is refused, naming it, changing nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import running_server, scale_onnx

from heddle.clients.errors import HeddleError
from heddle.server.cli import main
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
from heddle.server.config.load import load_config
from heddle.server.runtime.reload import ReloadError, diff_configs, fingerprint

X = np.arange(4, dtype=np.float32)


def _py(name: str) -> dict:
    return python_model(name, "stage_fns:tail", [tensor("x")], [tensor("y")])


def _one_stage(name: str, model: str) -> dict:
    return pipeline(name, [tensor("x")], {"y": "s.y"}, [stage("s", model, x="input:x")])


def _write(path: Path, models: list[str], **server) -> Path:
    tables = {"scale": onnx_model("scale", "scale.onnx"), "keep": _py("keep"), "gone": _py("gone"),
              "fresh": _py("fresh")}
    doc = document(server=server or None, devices=[onnx_device("cpu0"), python_device("py0", slots=2)],
                   models=[tables[m] for m in models],
                   pipelines=[_one_stage(f"p_{m}", m) for m in models])
    path.write_text(to_toml(doc))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    scale_onnx(tmp_path / "scale.onnx", 2.0)
    _write(tmp_path / "heddle.toml", ["scale", "keep", "gone"])
    return tmp_path


def test_diff_names_each_change_and_sees_a_file_rewritten_in_place(files: Path) -> None:
    old = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    prints = {n: fingerprint(m) for n, m in old.models.items()}
    time.sleep(0.01)  # a distinct mtime for the rewrite (nanosecond clocks; coarse filesystems differ)
    scale_onnx(files / "scale.onnx", 3.0)
    new = load_config(_write(files / "new.toml", ["scale", "keep", "fresh"]), grpc_port=0, metrics_port=0, http_port=0)
    diff = diff_configs(old, new, prints)
    assert (diff.models_added, diff.models_changed, diff.models_removed) == (("fresh",), ("scale",), ("gone",))
    assert (diff.pipelines_added, diff.pipelines_removed) == (("p_fresh",), ("p_gone",))
    assert diff_configs(new, new, {n: fingerprint(m) for n, m in new.models.items()}).to_load == ()


def test_a_changed_models_inputs_or_outputs_cannot_change_live(files: Path) -> None:
    """Requests queued for a model were checked against its IO: a new IO under the same name is
    refused, naming the model; so is an LLM model or a device change."""
    old = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    doc = document(devices=[onnx_device("cpu0"), python_device("py0", slots=3)],
                   models=[onnx_model("scale", "scale.onnx"),
                           python_model("keep", "stage_fns:tail", [tensor("x")], [tensor("y", shape=(-1, 2))]),
                           _py("gone")],
                   pipelines=[_one_stage("p_scale", "scale"), _one_stage("p_gone", "gone"),
                              pipeline("p_keep", [tensor("x")], {"y": "s.y"}, [stage("s", "keep", x="input:x")])])
    (files / "new.toml").write_text(to_toml(doc))
    new = load_config(files / "new.toml", grpc_port=0, metrics_port=0, http_port=0)
    with pytest.raises(ReloadError) as refused:
        diff_configs(old, new, {n: fingerprint(m) for n, m in old.models.items()})
    assert refused.value.fixed
    assert "[[devices]]" in str(refused.value) and "model 'keep''s inputs or outputs" in str(refused.value)


@pytest.mark.slow
def test_under_load_a_reload_fails_nothing_but_the_removed_pipeline(files: Path, capsys) -> None:
    config = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    with running_server(config) as running:
        failures: list[tuple[str, str]] = []
        scaled: list[tuple[float, float]] = []  # (sent at, y[1]): 2.0 from the old version, 3.0 the new
        stop = threading.Event()
        reloading = threading.Event()  # from the reload call on, the swap may have happened

        def load(name: str) -> None:
            with running.client() as client:
                while not stop.is_set():
                    try:
                        sent = time.monotonic()
                        y = client.infer(name, {"x": X}, timeout_s=30).outputs["y"]
                        if name == "p_scale":
                            scaled.append((sent, float(y[1])))
                    except HeddleError as exc:
                        if not (name == "p_gone" and reloading.is_set() and exc.code().name == "NOT_FOUND"):
                            failures.append((name, f"{exc.code().name}: {exc.details()}"))

        names = ["p_scale"] * 4 + ["p_keep"] * 3 + ["p_gone"]  # 8 clients
        threads = [threading.Thread(target=load, args=(n,)) for n in names]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            keep_runs_before = _measured_runs(running, "keep")
            scale_onnx(files / "scale.onnx", 3.0)
            _write(files / "heddle.toml", ["scale", "keep", "fresh"])
            reloading.set()
            code = main(["reload", "--target", running.target])
            reloaded_at = time.monotonic()
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        with running.client() as client:
            fresh = client.infer("p_fresh", {"x": X}).outputs["y"]
            with pytest.raises(HeddleError) as gone:
                client.infer("p_gone", {"x": X})
        assert code == 0 and failures == []
        before = [y for sent, y in scaled if sent < reloaded_at]
        after = [y for sent, y in scaled if sent > reloaded_at]
        assert set(before) <= {2.0, 3.0} and before[0] == 2.0
        assert after and set(after) == {3.0}  # once the reload answered, only the new version
        assert fresh.tolist() == X.tolist() and gone.value.code().name == "NOT_FOUND"
        assert _measured_runs(running, "keep") > keep_runs_before > 0  # the learned profile was kept
    out = capsys.readouterr().out
    assert "models added: fresh" in out and "models changed: scale" in out and "models removed: gone" in out


def _measured_runs(running, model: str) -> int:
    return sum(est.samples for m, _, _, est in running.server.runtime.core.profiles.rows() if m == model)


def test_what_cannot_change_live_is_refused_naming_it_and_nothing_changes(files: Path, capsys) -> None:
    config = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    with running_server(config) as running:
        _write(files / "heddle.toml", ["scale", "keep", "gone", "fresh"], grace_period_s=3.0)
        code = main(["reload", "--target", running.target])
        err = capsys.readouterr().err
        assert code == 1 and "FAILED_PRECONDITION" in err and "[server] grace_period_s" in err
        with running.client() as client:
            with pytest.raises(HeddleError, match="NOT_FOUND"):
                client.infer("p_fresh", {"x": X})
            assert client.infer("p_gone", {"x": X}).outputs["y"].tolist() == X.tolist()
        (files / "heddle.toml").write_text("[[devices]\n")  # not TOML
        assert main(["reload", "--target", running.target]) == 1
        assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_a_model_that_does_not_load_changes_nothing(files: Path, capsys) -> None:
    config = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    with running_server(config) as running:
        doc = (files / "heddle.toml").read_text()
        (files / "broken.onnx").write_bytes(b"not an onnx file")
        (files / "heddle.toml").write_text(doc + to_toml({"models": [onnx_model("broken", "broken.onnx")]}))
        code = main(["reload", "--target", running.target])
        err = capsys.readouterr().err
        assert code == 1 and "broken" in err
        assert "broken" not in running.server.runtime.config.models


def test_kserve_repository_unload_and_load_go_through_reload(files: Path) -> None:
    """Unload stops serving a model and the pipelines that run it (NOT_FOUND), through later reloads
    too; Load brings it back from the config file; an unknown name is NOT_FOUND."""
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    config = load_config(files / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    with running_server(config) as running, running.client() as client:
        kserve = tritonclient_grpc.InferenceServerClient(running.target)
        kserve.unload_model("keep")
        index = {m.name for m in kserve.get_model_repository_index().models}
        assert "keep" not in index and "p_keep" not in index and "p_scale" in index
        with pytest.raises(HeddleError, match="NOT_FOUND"):
            client.infer("p_keep", {"x": X})
        assert main(["reload", "--target", running.target]) == 0  # stays unloaded
        assert "p_keep" not in running.server.runtime.config.pipelines
        kserve.load_model("keep")
        assert client.infer("p_keep", {"x": X}).outputs["y"].tolist() == X.tolist()
        with pytest.raises(InferenceServerException, match="no model or pipeline 'nope'"):
            kserve.unload_model("nope")
