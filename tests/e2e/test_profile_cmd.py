"""`heddle profile`: run times of the configured models measured through the real executors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_fixtures import chain, heddle_cache_dir, parse_test_document, py_model  # noqa: F401 (fixture)

from heddle.clients.scenarios import App, Scenario
from heddle.scheduler import Core, ModelSpec, TensorSpec
from heddle.scheduler.sim.tracefile import TRACE_FORMAT, parse_profile
from heddle.server.cli import main
from heddle.server.config.builder import (
    document,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    stage,
    tensor,
    to_toml,
)
from heddle.server.tools.profile_cmd import (
    load_profile_file,
    measure_profile,
    parse_shape_overrides,
    profile_from_trace,
    sample_inputs,
    write_profile_file,
)
from heddle.server.tools.profile_load import default_load, measure_under_load

ECHO = "heddle.backends.zoo.ops:echo"


HEAD_PIPELINE = pipeline("h", [tensor("features", "FP32", (-1, 64))], {"logits": "s0.logits"},
                         [stage("s0", "head", features="input:features")])


@pytest.fixture(scope="module")
def config_doc(heddle_cache_dir):  # noqa: F811
    return document(server={"cache_dir": str(heddle_cache_dir)},
                    devices=[onnx_device("cpu0", kind="cpu", intra_op_threads=1),
                             python_device("py0", kind="cpu", slots=2)],
                    models=[onnx_model("head", "builtin:head_cls"), py_model("echo", ECHO)])


def config_file(config_doc, path, *pipelines):
    """The config with these pipelines as the file `heddle profile --config` reads."""
    path.write_text(to_toml({**config_doc, "pipelines": list(pipelines)}))
    return path


@pytest.fixture(scope="module")
def doc(config_doc):
    return measure_profile(parse_test_document(config_doc), runs=4, warmup=1)


def test_every_model_is_timed_on_every_device_allowed_to_run_it(doc):
    """The ONNX model on the ORT device, the python op on the python device, each `runs` times."""
    entries = {(e["model"], e["device"]): e for e in doc["entries"]}
    assert set(entries) == {("head", "cpu0"), ("echo", "py0")}
    for e in entries.values():
        assert e["runs"] == len(e["samples_s"]) == 4
        assert 0 < e["min_s"] <= e["p50_s"] <= e["tail_s"] <= e["max_s"]
        assert e["min_s"] <= e["latency_s"] <= e["max_s"]
    assert doc["models"]["head"]["inputs"] == {"features": [1, 64]}
    assert "Gemm" in doc["models"]["head"]["op_types"] or "MatMul" in doc["models"]["head"]["op_types"]
    assert [d["id"] for d in doc["devices"]] == ["cpu0", "py0"] and doc["method"] == "executors"


def test_the_profile_loads_as_a_table_the_core_plans_with(doc, config_doc, tmp_path):
    """Written as JSON or TOML, the profile reads back the same, and a Core built on its table
    plans with the measured figures (source "table")."""
    as_json = parse_profile(load_profile_file(write_profile_file(doc, tmp_path / "p.json")))
    as_toml = parse_profile(load_profile_file(write_profile_file(doc, tmp_path / "p.toml")))
    assert as_json.entries == as_toml.entries and as_json.samples == as_toml.samples
    config = parse_test_document(config_doc)
    core = Core(config.devices, config.models, "fcfs", as_json.table())
    measured = next(e for e in doc["entries"] if e["model"] == "head")
    estimate = core.profiles.estimate("head", core.devices["cpu0"])
    assert estimate.source == "table" and estimate.mean_s == pytest.approx(measured["latency_s"])


def test_shape_overrides_and_the_load_generators_default_dims(config_doc):
    """Dynamic dims are 1 (first) and 16 (others) unless --shape says otherwise, BYTES are words;
    a shape that does not fit the declared one, or a malformed spec, is refused."""
    config = parse_test_document(config_doc)
    rng = np.random.default_rng(0)
    assert sample_inputs(config.models["echo"], {}, rng)["x"].shape == (1,)
    text = ModelSpec("enc", "onnxruntime", "enc.onnx", (TensorSpec("ids", "INT64", (-1, -1)),), ())
    ids = sample_inputs(text, {}, rng)["ids"]
    assert ids.shape == (1, 16) and ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < 100
    words = ModelSpec("tok", "python", "m:f", (TensorSpec("text", "BYTES", (-1,)),), ())
    text_in = sample_inputs(words, {}, rng)["text"]
    assert text_in.dtype == object and isinstance(text_in[0], bytes)
    shapes = parse_shape_overrides(["echo:x=7", "head:features=2x64"])
    assert shapes == {("echo", "x"): (7,), ("head", "features"): (2, 64)}
    assert sample_inputs(config.models["head"], shapes, rng)["features"].shape == (2, 64)
    with pytest.raises(ValueError, match="does not fit"):
        sample_inputs(config.models["head"], {("head", "features"): (2, 3)}, rng)
    with pytest.raises(ValueError, match="MODEL:INPUT="):
        parse_shape_overrides(["head=1x64"])


def test_a_profile_from_a_trace_takes_the_recorded_stage_runs():
    """--from-trace: per (model, device), the recorded dispatch-to-completion times."""
    lines = [{"event": "header", "format": TRACE_FORMAT, "policy": "fcfs",
              "devices": [{"id": "cpu0", "kind": "cpu", "backend": "onnxruntime", "slots": 1}],
              "pipelines": {"p": {"stages": [{"name": "s", "model": "m", "after": []}]}}}]
    lines += [{"event": "stage", "t_s": i, "request_id": f"r{i}", "stage": "s", "model": "m", "device": "cpu0",
               "status": "OK", "run_s": 0.01 * (i + 1), "compute_s": 0.005} for i in range(4)]
    doc = profile_from_trace("\n".join(json.dumps(x) for x in lines), "t.jsonl")
    (entry,) = doc["entries"]
    assert (entry["model"], entry["device"], entry["runs"]) == ("m", "cpu0", 4)
    assert entry["latency_s"] == pytest.approx(0.025) and entry["samples_s"] == [0.01, 0.02, 0.03, 0.04]
    with pytest.raises(ValueError, match="no stage runs"):
        profile_from_trace(json.dumps(lines[0]), "t.jsonl")


def test_heddle_profile_command_writes_the_file_and_refuses_unknown_models(config_doc, tmp_path, capsys):
    """`heddle profile --config F --model echo --out P` prints a row and writes P; an unknown
    model is exit status 2 with its name."""
    config = config_file(config_doc, tmp_path / "c.toml")
    out = tmp_path / "prof.json"
    assert main(["profile", "--config", str(config), "--model", "echo", "--runs", "2", "--warmup", "0",
                 "--out", str(out)]) == 0
    assert "echo" in capsys.readouterr().out
    assert [e["model"] for e in json.loads(out.read_text())["entries"]] == ["echo"]
    assert main(["profile", "--config", str(config), "--model", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_a_profile_under_load_times_the_stage_runs_a_served_load_recorded(config_doc, tmp_path):
    """--under-load serves the config in a child process and drives it: every model of the loaded
    pipelines gets an entry of run times from dispatch to completion, pipelines left out of the
    load get none, and the warm-up's runs are not in it."""
    config = config_file(config_doc, tmp_path / "c.toml", HEAD_PIPELINE, chain("e", ["echo", "echo"]))
    assert [a.pipeline for a in default_load(str(config), 2).apps] == ["e", "h"]
    only_head = Scenario("t", (App("head app", "h", "closed", concurrency=2),))
    doc = measure_under_load(str(config), only_head, duration_s=1.5, warmup_s=0.5)
    entries = {(e["model"], e["device"]): e for e in doc["entries"]}
    assert set(entries) == {("head", "cpu0")} and doc["method"] == "under_load"
    e = entries[("head", "cpu0")]
    assert e["runs"] == len(e["samples_s"]) == doc["stage_runs"] >= 10
    assert 0 < e["min_s"] <= e["p50_s"] <= e["max_s"]
    assert doc["warmup_stage_runs"] >= 1  # recorded by the server, left out of the table


def test_an_under_load_scenario_naming_an_unknown_pipeline_is_refused(config_doc, tmp_path, capsys):
    """A scenario app on a pipeline the config lacks is a ValueError naming it; a non-positive
    --under-load is exit status 2 naming the option."""
    config = config_file(config_doc, tmp_path / "c.toml", HEAD_PIPELINE)
    bad = Scenario("t", (App("x", "nope", "closed"),))
    with pytest.raises(ValueError, match="nope"):
        measure_under_load(str(config), bad, duration_s=1.0)
    assert main(["profile", "--config", str(config), "--under-load", "0", "--out", str(tmp_path / "p.json")]) == 2
    assert "--under-load" in capsys.readouterr().err


@pytest.mark.slow
def test_a_profile_under_load_runs_while_the_default_http_port_is_taken(config_doc, tmp_path):
    """The served child takes free ports for everything, HTTP included: a heddle already serving on
    8000 (held here) does not stop a profile under load."""
    import socket

    config = config_file(config_doc, tmp_path / "c.toml", HEAD_PIPELINE)
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("127.0.0.1:8000 is taken already")
        held.listen()
        scenario = Scenario("t", (App("head app", "h", "closed", concurrency=1),))
        doc = measure_under_load(str(config), scenario, duration_s=0.5, warmup_s=0.1)
    assert doc["stage_runs"] >= 1


def test_batch_axis_is_measured_and_planned_with(config_doc, tmp_path):
    """--batch times passes of b rows of a model whose first dim is dynamic; the profile's batch
    curve is what ProfileTable scales sizes by, instead of the assumed default axis."""
    from heddle.scheduler.profiles import batch_scale

    doc = measure_profile(parse_test_document(config_doc), runs=3, warmup=1, models=["head"], batches=(1, 4, 8))
    sizes = sorted(e.get("batch", 1) for e in doc["entries"] if e["model"] == "head")
    assert sizes == [1, 4, 8]
    assert doc["batches"] == [1, 4, 8]
    profile = parse_profile(doc)
    assert set(profile.entries) == {("head", "cpu0", 0)}  # batched passes are curve points, not runs
    curve = profile.batch_curves[("head", "cpu0")]
    one = profile.entries[("head", "cpu0", 0)].latency_s
    by_rows = {e.get("batch", 1): e["latency_s"] for e in doc["entries"]}
    assert curve == pytest.approx({4: by_rows[4] / one, 8: by_rows[8] / one})
    table = profile.table()
    cpu0 = next(d for d in parse_test_document(config_doc).devices if d.id == "cpu0")
    assert table.estimate("head", cpu0, batch=8).mean_s == pytest.approx(by_rows[8])
    six = table.estimate("head", cpu0, batch=6).mean_s  # between the measured 4 and 8
    assert min(by_rows[4], by_rows[8]) <= six <= max(by_rows[4], by_rows[8])
    assert table.estimate("head", cpu0, batch=8).mean_s != pytest.approx(one * batch_scale(8), rel=1e-6)


def test_batch_sizes_are_checked():
    from heddle.server.tools.profile_cmd import parse_batches

    assert parse_batches("8,2") == (1, 2, 8)
    for bad in ("0", "two", "-1,2"):
        with pytest.raises(ValueError, match="--batch"):
            parse_batches(bad)
