"""Config schema: a misspelled key in any table is refused at load naming the file, the table, the
key and what was meant; a value of the wrong type names the key and the type expected."""

from __future__ import annotations

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from server_fixtures import TESTS_DIR, py_model_toml

from heddle.server.config.builder import document, onnx_device, python_device, python_model, tensor, to_toml
from heddle.server.config.load import ConfigError, parse_config, parse_document

PY = '[[devices]]\nid = "py0"\nbackend = "python"\n{extra}\n'
ORT = '[[devices]]\nid = "cpu0"\nbackend = "onnxruntime"\n{extra}\n'
TRITON = '[[devices]]\nid = "tr0"\nkind = "remote"\nbackend = "triton"\nurl = "127.0.0.1:1"\n{extra}\n'
MODEL = py_model_toml("m", "stage_fns:tail")
PY_MODEL = py_model_toml("q", "stage_fns:tail")
PIPELINE = ('[[pipelines]]\nname = "p"\n{extra}\ninputs = [{{ name = "x", datatype = "FP32", shape = [-1] }}]\n'
            'outputs = {{ y = "s.y" }}\n'
            'stages = [{{ name = "s", model = "m", inputs = {{ x = "input:x" }}{stage} }}]\n')


def config(*, server: str = "", devices: str = "", models: str = "", pipeline: str = "", stage: str = "") -> str:
    """A small valid config (a python device, model and pipeline) with extra TOML in one place."""
    return (server + PY.format(extra="") + devices + MODEL + models
            + PIPELINE.format(extra=pipeline, stage=stage))


# One misspelled key per table: (the config, what the error must say after "bad.toml: ").
MISSPELLED = {
    "[server]": (config(server="[server]\ngrace_period = 3\n\n"),
                 "[server]: unknown key 'grace_period' (did you mean 'grace_period_s'?)"),
    "[server.tls]": (config(server='[server.tls]\ncert_file = "s.pem"\n\n'),
                     "[server.tls]: unknown key 'cert_file' (did you mean 'cert'?)"),
    "[admission]": (config(server="[admission]\nmax_inflight = 3\n\n"),
                    "[admission]: unknown key 'max_inflight' (did you mean 'max_in_flight'?)"),
    "[power]": (config(server="[power]\nbudget = 3.0\n\n"), "[power]: unknown key 'budget' (did you mean 'budget_w'?)"),
    "[tracing]": (config(server="[tracing]\nsampling_rate = 0.1\n\n"),
                  "[tracing]: unknown key 'sampling_rate' (did you mean 'sampling_ratio'?)"),
    "onnxruntime device": (config(devices=ORT.format(extra="cpu_afinity = [0]")),
                           "devices[1] ('cpu0'): unknown key 'cpu_afinity' (did you mean 'cpu_affinity'?)"),
    "onnxruntime device threads": (config(devices=ORT.format(extra="intra_op_thread = 1")),
                                   "devices[1] ('cpu0'): unknown key 'intra_op_thread' "
                                   "(did you mean 'intra_op_threads'?)"),
    "python device": (PY.format(extra="slot = 2") + MODEL + PIPELINE.format(extra="", stage=""),
                      "devices[0] ('py0'): unknown key 'slot' (did you mean 'slots'?)"),
    "triton device": (config(devices=TRITON.format(extra="client_timeout = 3.0")),
                      "devices[1] ('tr0'): unknown key 'client_timeout' (did you mean 'client_timeout_s'?)"),
    "device power": (config(devices=ORT.format(extra="power = { idle_w = 1.0, active = [2.0] }")),
                     "devices[1] ('cpu0'): power: unknown key 'active' (did you mean 'active_w'?)"),
    "device sensor": (config(devices=ORT.format(extra='sensor = { kind = "rapl", zones = "package-0" }')),
                      "devices[1] ('cpu0'): sensor: unknown key 'zones' (did you mean 'zone'?)"),
    "device dvfs": (config(devices=ORT.format(extra='dvfs = { kind = "virtual", level = 3 }')),
                    "devices[1] ('cpu0'): dvfs: unknown key 'level' (did you mean 'levels'?)"),
    "device speed": (config(devices=ORT.format(extra="speed = { flops = 1e9 }")),
                     "devices[1] ('cpu0'): speed: unknown key 'flops' (did you mean 'flops_per_s'?)"),
    "onnxruntime model": (config(devices=ORT.format(extra=""), models='[[models]]\nname = "enc"\npath = "x.onnx"\n'
                                                                     'timeout = 5\n\n'),
                          "model 'enc': unknown key 'timeout' (did you mean 'timeout_ms'?)"),
    "onnxruntime LLM": (config(devices=ORT.format(extra=""), models='[[models]]\nname = "llm"\nkind = "llm"\n'
                                                                   'path = "x.onnx"\nmax_batchh = 4\n\n'),
                        "model 'llm': unknown key 'max_batchh' (did you mean 'max_batch'?)"),
    "python model": (config(models=PY_MODEL.replace("\ninputs", '\nisolaton = "process"\ninputs')),
                     "model 'q': unknown key 'isolaton' (did you mean 'isolation'?)"),
    "triton model": (config(devices=TRITON.format(extra=""),
                            models='[[models]]\nname = "t"\nbackend = "triton"\ntriton_modle = "x"\n\n'),
                     "model 't': unknown key 'triton_modle' (did you mean 'triton_model'?)"),
    "triton LLM": (config(devices=TRITON.format(extra=""),
                          models='[[models]]\nname = "t"\nkind = "llm"\nbackend = "triton"\nvocab = 512\n\n'),
                   "model 't': unknown key 'vocab' (did you mean 'vocab_size'?)"),
    "model tensor": (config(models=PY_MODEL.replace('datatype = "FP32"', 'dtype = "FP32"', 1)),
                     "model 'q': inputs[0]: unknown key 'dtype' (did you mean 'datatype'?)"),
    "[[pipelines]]": (config(pipeline='descripton = "x"'),
                      "pipeline 'p': unknown key 'descripton' (did you mean 'description'?)"),
    "pipeline stage": (config(stage=", priorty = 3"),
                       "pipeline 'p' stage 's': unknown key 'priorty'; "
                       "known: ['inputs', 'map', 'map_batch', 'map_sort', 'model', 'name', 'when']"),
    "top level": (config() + '[[modles]]\nname = "x"\n', "unknown table 'modles' (did you mean 'models'?)"),
}


@pytest.mark.parametrize("table", list(MISSPELLED))
def test_a_misspelled_key_is_refused_naming_the_table_and_what_was_meant(table: str):
    """A key the table does not have stops the load: file, table, key and the closest key said."""
    text, said = MISSPELLED[table]
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    assert f"bad.toml: {said}" in str(info.value).splitlines()


@pytest.mark.parametrize("text, said", [
    (config(devices=ORT.format(extra='slots = "2"')), "devices[1] ('cpu0'): slots must be an integer, got '2'"),
    (config(server="[server]\ngrpc_port = 70000\n\n"),
     "[server]: grpc_port must be less than or equal to 65535, got 70000"),
    (config(server='[admission]\nenabled = "yes"\n\n'), "[admission]: enabled must be true or false, got 'yes'"),
    (config(devices=ORT.format(extra='cpu_affinity = "0-3"')),
     "devices[1] ('cpu0'): cpu_affinity must be an array, got '0-3'"),
    (config(devices=ORT.format(extra="sensor = 3")), "devices[1] ('cpu0'): sensor must be a table, got 3"),
    (config(models=PY_MODEL.replace("shape = [-1]", 'shape = ["n"]', 1)),
     "model 'q': inputs[0]: shape[0] must be an integer, got 'n'"),
    (config(server='[server]\npolicy = "prority"\n\n'),
     "[server]: unknown policy 'prority' (did you mean 'priority'?); known: "
     "['dream', 'edf', 'fcfs', 'least_slack', 'priority', 'sjf', 'twill']"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(text: str, said: str):
    """Values are not coerced: "2" for an integer is an error naming the key and the type expected."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    assert f"bad.toml: {said}" in str(info.value).splitlines()


@pytest.mark.parametrize("text, said", [
    (config(devices=ORT.format(extra='url = "h:1"')),
     "devices[1] ('cpu0'): unknown key 'url' (a key of triton devices; this device is onnxruntime)"),
    (config(devices=ORT.format(extra=""), models='[[models]]\nname = "c"\npath = "x.onnx"\nmax_new_tokens = 8\n\n'),
     "model 'c': unknown key 'max_new_tokens' (a key of onnxruntime LLM and triton LLM models; "
     "this model is onnxruntime)"),
    (config(devices=TRITON.format(extra=""),
            models='[[models]]\nname = "t"\nkind = "llm"\nbackend = "triton"\nmax_batch = 4\n\n'),
     "model 't': unknown key 'max_batch': max_batch is for LLMs heddle runs itself; a Triton-hosted LLM is "
     "batched by its Triton server"),
])
def test_a_key_of_another_kind_of_table_says_where_it_belongs(text: str, said: str):
    """A key right for another backend (or for LLMs only) is refused saying whose key it is."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    assert f"bad.toml: {said}" in str(info.value).splitlines()


def test_an_inline_stage_cannot_also_run_in_a_worker_process():
    """inline = true (on the event loop) with isolation = "process" is refused naming both keys; inline
    on a Triton model is a key Triton models do not have."""
    text = config(models=PY_MODEL.replace("\ninputs", '\ninline = true\nisolation = "process"\ninputs'))
    with pytest.raises(ConfigError, match='inline = true .* cannot also have isolation = "process"'):
        parse_config(text, "bad.toml", TESTS_DIR)
    text = config(devices=TRITON.format(extra=""),
                  models='[[models]]\nname = "t"\nbackend = "triton"\ninline = true\n\n')
    with pytest.raises(ConfigError, match="model 't': unknown key 'inline'"):
        parse_config(text, "bad.toml", TESTS_DIR)


def test_every_mistake_is_said_at_once_one_line_each():
    """Several mistakes in one file: each on its own line, so one start shows them all."""
    text = config(server="[server]\ngrpc_prot = 1\n\n", devices=ORT.format(extra="cpu_afinity = [0]"),
                  stage=", priorty = 3")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("bad.toml: ") for line in lines), lines


def test_a_model_is_not_resolved_when_the_file_has_a_mistake(tmp_path):
    """Parsing comes before resolving: a typo is said without building a model or asking a server."""
    text = config(devices=ORT.format(extra="cpu_afinity = [0]"),
                  models='[[models]]\nname = "c"\npath = "builtin:cnn"\n\n')
    with pytest.raises(ConfigError, match="cpu_afinity"):
        parse_config(text, "bad.toml", TESTS_DIR, {"cache_dir": str(tmp_path / "cache")})
    assert not (tmp_path / "cache").exists()


@given(st.text(st.characters(exclude_categories=("Cs",))))
def test_any_string_survives_a_round_trip_through_to_toml(value: str):
    """to_toml escapes every string: what tomllib reads back is the value written."""
    doc = {"server": {"cache_dir": value}, "devices": [{"id": value, "options": [{"k": value}]}]}
    assert tomllib.loads(to_toml(doc)) == doc


def test_a_built_document_is_checked_like_a_file():
    """config_builder documents go through the same schema: a misspelled keyword is said as in a file,
    and the same document written with to_toml parses to the same config."""
    bad = document(devices=[python_device(), onnx_device("cpu0", cores=[0], cpu_afinity=[1])])
    with pytest.raises(ConfigError) as info:
        parse_document(bad, "built", TESTS_DIR)
    assert str(info.value) == "built: devices[1] ('cpu0'): unknown key 'cpu_afinity' (did you mean 'cpu_affinity'?)"
    good = document(devices=[python_device(slots=2)],
                    models=[python_model("m", "stage_fns:tail", [tensor("x")], [tensor("y")], timeout_ms=50)])
    assert parse_document(good, "built", TESTS_DIR) == parse_config(to_toml(good), "built", TESTS_DIR)


ORT_MODEL = '[[models]]\nname = "c"\npath = "x.onnx"\n{extra}\n\n'


@pytest.mark.parametrize("text, said", [
    (config(devices=ORT.format(extra=""), models=ORT_MODEL.format(extra="max_batch = 8\nmax_batch_size = 4")),
     "model 'c': max_batch 8 is over max_batch_size 4: one pass may not take more rows than the model accepts"),
    (config(devices=ORT.format(extra=""),
            models=ORT_MODEL.format(extra="max_batch = 4\npreferred_batch_sizes = [2, 8]")),
     "model 'c': preferred_batch_sizes [8] must lie in [1, max_batch = 4]"),
    (config(devices=ORT.format(extra=""), models=ORT_MODEL.format(extra="max_batch = 4\nmax_queue_delay_us = -1")),
     "model 'c': max_queue_delay_us must be greater than or equal to 0, got -1"),
    (config(models=py_model_toml("b", "stage_fns:tail", max_batch=4)),
     "model 'b': unknown key 'max_batch': a python stage is called once per request; dynamic batching is "
     "for onnxruntime and triton models"),
])
def test_batching_keys_are_checked_against_the_models_limits(text: str, said: str):
    """Dynamic batching keys: a batch within max_batch_size, preferred sizes within max_batch, a
    delay of no less than 0; python stages run one request per call, so they take none."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml", TESTS_DIR)
    assert f"bad.toml: {said}" in str(info.value).splitlines()


def test_a_model_that_batches_needs_a_dynamic_first_dim(tmp_path):
    """max_batch on an ONNX model whose input has a fixed first dim is refused naming the tensor:
    there is no axis to join requests on."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), tmp_path / "fixed.onnx")
    text = ORT.format(extra="") + '[[models]]\nname = "f"\npath = "fixed.onnx"\nmax_batch = 4\n'
    with pytest.raises(ConfigError, match=r"model 'f': max_batch 4 needs a dynamic first \(batch\) dim on every "
                                          r"input and output, but 'x' has shape \[1, 4\]"):
        parse_config(text, "bad.toml", tmp_path)
