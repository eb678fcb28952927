"""Python stage classes and python_path (#14) against a real gateway: `class = "module:Class"` with
`options` is constructed once per worker slot (thread or process isolation) and called per run; a
constructor that fails stops the start naming the stage; python_path finds a module by folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, running_server

from heddle.backends.base import BackendError
from heddle.server.config.builder import document, pipeline, python_device, stage, tensor, to_toml
from heddle.server.config.load import load_config
from heddle.server.config.schema import ConfigError

X = np.arange(4, dtype=np.float32)


def _class_model(name: str, cls: str, options: dict | None, **keys) -> dict:
    table = {"name": name, "backend": "python", "class": cls, "inputs": [tensor("x")],
             "outputs": [tensor("y"), tensor("pid", "INT64")], **keys}
    if options is not None:
        table["options"] = options
    return table


def _config(**keys):
    return parse_test_document(document(
        devices=[python_device("py0", slots=2)],
        models=[_class_model("scale", "stage_fns:Scaler", {"factor": 3.0, "offset": 1.0}, **keys)],
        pipelines=[pipeline("p", [tensor("x")], {"y": "s.y", "pid": "s.pid"}, [stage("s", "scale", x="input:x")])]))


@pytest.mark.parametrize("isolation", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_a_stage_class_is_constructed_once_per_slot_and_called_per_run(isolation: str) -> None:
    import stage_fns

    stage_fns.Scaler.constructed = 0
    with running_server(_config(isolation=isolation)) as running, running.client() as client:
        results = [client.infer("p", {"x": X}) for _ in range(12)]
    assert all(r.outputs["y"].tolist() == (X * 3 + 1).tolist() for r in results)
    if isolation == "thread":  # both slots' instances built at load, in this process; none per run
        assert stage_fns.Scaler.constructed == 2
    else:  # one per worker process: every call's instance count in its worker is 1
        assert {int(r.outputs["pid"][1]) for r in results} == {1}
        assert len({int(r.outputs["pid"][0]) for r in results}) <= 2


def test_a_failing_constructor_stops_the_start_naming_the_stage() -> None:
    config = parse_test_document(document(
        devices=[python_device("py0")],
        models=[_class_model("strict", "stage_fns:NeedsAThreshold", {"threshold": 7})],
        pipelines=[chain("p", ["strict"])]))
    with pytest.raises(BackendError, match="stage_fns:NeedsAThreshold: constructing it failed: ValueError: "
                                           "threshold 7 is outside"), running_server(config):
        pass


@pytest.mark.parametrize(("keys", "message"), [
    ({"function": "stage_fns:tail"}, "give function .* or class .*, exactly one"),
    ({"class": None, "function": "stage_fns:tail", "options": {"a": 1}}, "options are a stage class's"),
])
def test_function_and_class_mistakes_are_refused(keys: dict, message: str) -> None:
    table = {k: v for k, v in {**_class_model("m", "stage_fns:Scaler", None), **keys}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_test_document(document(devices=[python_device("py0")], models=[table], pipelines=[chain("p", ["m"])]))


def test_python_path_finds_a_stage_module_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "heddle_test_doubler.py").write_text(
        "def double(x):\n    return {'y': x * 2}\n")
    doc = document(devices=[python_device("py0")],
                   models=[{"name": "d", "backend": "python", "function": "heddle_test_doubler:double",
                            "inputs": [tensor("x")], "outputs": [tensor("y")]}],
                   pipelines=[chain("p", ["d"])])
    (tmp_path / "heddle.toml").write_text('python_path = ["stages"]\n' + to_toml(doc))
    config = load_config(tmp_path / "heddle.toml", grpc_port=0, metrics_port=0, http_port=0)
    with running_server(config) as running, running.client() as client:
        assert client.infer("p", {"x": X}).outputs["y"].tolist() == (X * 2).tolist()
    (tmp_path / "bad.toml").write_text('python_path = ["nowhere"]\n' + to_toml(doc))
    with pytest.raises(ConfigError, match="python_path 'nowhere': no folder"):
        load_config(tmp_path / "bad.toml")
