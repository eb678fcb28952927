"""LLM generation engine, tokenizers and the core's step re-entry: against a plain onnxruntime loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sched_fixtures import tensor

from heddle.backends.base import InputError
from heddle.backends.llm import (
    DecoderLayout,
    GenerationConfig,
    KVCache,
    LlmEngine,
    LlmSequence,
    decoder_spec,
    sample_token,
)
from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.tokenizer import (
    BOS_ID,
    EOS_ID,
    ByteTokenizer,
    StreamDecoder,
    byte_tokenizer_json,
    decode_ids,
    encode_text,
    load_tokenizer,
)
from heddle.backends.zoo.build import build_model
from heddle.scheduler import Core, Outcome, PipelineSpec, RunState, StageSpec, validate_pipeline
from heddle.scheduler.specs import DeviceSpec, ModelSpec

PROMPTS = ([5, 17, 99, 3], [7] * 9, [100, 200], [42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])


@pytest.fixture(scope="module")
def llm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model("llm", tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def session(llm_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(llm_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def engine(llm_path: Path, session: ort.InferenceSession) -> LlmEngine:
    inputs, outputs = read_io_spec(llm_path)
    spec = ModelSpec("llm", "onnxruntime", str(llm_path), inputs, outputs, "llm", options={"max_positions": 512})
    names = [o.name for o in session.get_outputs()]
    return LlmEngine(lambda feed: dict(zip(names, session.run(names, dict(feed)), strict=True)),
                     DecoderLayout.from_spec(spec))


def reference_greedy(session: ort.InferenceSession, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy generation written out plainly: prefill, then feed `present` back as `past`."""
    names = [o.name for o in session.get_outputs()]
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    heads, head_dim = session.get_inputs()[3].shape[1], session.get_inputs()[3].shape[3]
    past = {n: np.zeros((1, heads, 0, head_dim), np.float32) for n in past_names}
    ids, out = list(prompt), []
    feed_ids, position = np.array([ids], np.int64), np.arange(len(ids), dtype=np.int64)[None]
    while len(out) < new_tokens:
        feed = {"input_ids": feed_ids, "position_ids": position,
                "attention_mask": np.ones((1, len(ids)), np.int64), **past}
        result = dict(zip(names, session.run(names, feed), strict=True))
        token = int(np.argmax(result["logits"][0, -1]))
        out.append(token)
        ids.append(token)
        past = {n: result[n.replace("past_key_values", "present")] for n in past_names}
        feed_ids, position = np.array([[token]], np.int64), np.array([[len(ids) - 1]], np.int64)
    return out


# ---- generation --------------------------------------------------------------------------------
def test_greedy_generation_equals_the_reference_loop(engine: LlmEngine, session) -> None:
    """Greedy decoding through the engine gives the plain loop's tokens, one for one."""
    for prompt in PROMPTS:
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=12)) == reference_greedy(session, prompt, 12)


def test_batched_decode_of_different_lengths_equals_one_at_a_time(engine: LlmEngine, session) -> None:
    """Sequences of different prompt and output lengths decoded in shared passes match the reference."""
    seqs = [LlmSequence(p, GenerationConfig(max_new_tokens=6 + 3 * i)) for i, p in enumerate(PROMPTS)]
    passes = 0
    while live := [s for s in seqs if not s.done]:
        engine.step(live)
        passes += 1
    for i, (seq, prompt) in enumerate(zip(seqs, PROMPTS, strict=True)):
        assert seq.generated == reference_greedy(session, prompt, 6 + 3 * i)
        assert seq.finish_reason == "length"
    assert passes == 6 + 3 * (len(PROMPTS) - 1)  # one pass per step, not one per sequence


def test_stop_token_ends_generation_and_is_kept(engine: LlmEngine, session) -> None:
    """A stop id ends the sequence right after it is produced; the stop id is the last token."""
    full = reference_greedy(session, PROMPTS[0], 10)
    stop = full[4]
    got = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=10, stop_token_ids=(stop,)))
    assert got == full[: full.index(stop) + 1]


def test_kv_cache_moves_with_the_sequence(engine: LlmEngine, session) -> None:
    """A sequence whose cache is relabelled to another device mid-generation continues exactly."""
    seq = LlmSequence(PROMPTS[1], GenerationConfig(max_new_tokens=8))
    engine.step([seq])
    assert seq.cache.length == len(PROMPTS[1])
    assert seq.cache.moved_to("gpu0").device == "gpu0"
    while not seq.done:
        engine.step([seq])
    assert seq.generated == reference_greedy(session, PROMPTS[1], 8)
    assert seq.release() > 0 and seq.cache.nbytes == 0 and seq.finish_reason == "length"


def test_bad_prompts_and_options_are_input_errors(engine: LlmEngine) -> None:
    """Out-of-vocab ids, too-long prompts, empty prompts and bad options raise InputError."""
    with pytest.raises(InputError, match="token ids"):
        engine.prefill(LlmSequence([1, 9999], GenerationConfig()))
    with pytest.raises(InputError, match="positions"):
        engine.prefill(LlmSequence([1] * 500, GenerationConfig(max_new_tokens=20)))
    with pytest.raises(InputError, match="no tokens"):
        LlmSequence([], GenerationConfig())
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -2}):
        with pytest.raises(InputError):
            GenerationConfig(**bad)


def test_decoder_spec_and_layout_come_from_the_graph(llm_path: Path) -> None:
    """An LLM's executor spec carries the graph's KV inputs; a non-decoder is refused."""
    stage = ModelSpec("llm", "onnxruntime", str(llm_path), (tensor("input_ids", "INT64", (1, -1)),),
                      (tensor("output_ids", "INT64", (1, -1)),), "llm")
    graph = decoder_spec(stage)
    layout = DecoderLayout.from_spec(graph)
    assert (layout.layers, layout.heads, layout.head_dim, layout.vocab, layout.batchable) == (2, 4, 32, 512, True)
    assert KVCache.empty(layout).length == 0
    with pytest.raises(InputError, match="decoder input"):
        DecoderLayout.from_spec(stage)


# ---- sampling -----------------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed_and_respects_top_k(engine: LlmEngine) -> None:
    """The same seed gives the same tokens; top_k=1 is greedy whatever the temperature."""
    config = GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    assert engine.generate(PROMPTS[0], config) == engine.generate(PROMPTS[0], config)
    greedy = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=10))
    assert engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=10, temperature=5.0, top_k=1, seed=1)) == greedy


def test_top_p_keeps_only_the_head_of_the_distribution() -> None:
    """With top_p 0.5 only tokens inside the first half of the probability mass are ever drawn."""
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    rng = np.random.default_rng(0)
    config = GenerationConfig(temperature=1.0, top_p=0.5)
    assert {sample_token(logits, config, rng) for _ in range(300)} == {0, 1}
    assert {sample_token(logits, GenerationConfig(temperature=1.0), rng) for _ in range(300)} == {0, 1, 2, 3}


# ---- tokenizers ---------------------------------------------------------------------------------
def test_byte_tokenizer_round_trips_text_and_streams_whole_characters() -> None:
    """Text survives encode/decode; a character split over tokens streams once it is complete."""
    tok = ByteTokenizer()
    text = "héllo ✓ 日本"
    assert tok.decode(tok.encode(text) + [EOS_ID]) == text
    stream = StreamDecoder(tok)
    assert [stream.push([i]) for i in tok.encode("日x")] == ["", "", "日", "x"]
    ids = encode_text(np.array([text.encode()], dtype=object))["input_ids"]
    assert ids[0, 0] == BOS_ID and decode_ids(ids)["text"][0].decode() == text


def test_tokenizer_json_read_by_the_tokenizers_library_matches(tmp_path: Path) -> None:
    """The byte tokenizer written as tokenizer.json encodes and decodes like ByteTokenizer."""
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text(byte_tokenizer_json())
    hf, tok = load_tokenizer(tmp_path), ByteTokenizer()
    for text in ("hello world", " a\n\tb", "héllo ✓ 日本"):
        assert hf.encode(text) == tok.encode(text)
        assert hf.decode(hf.encode(text) + [BOS_ID]) == text


# ---- the core: a stage that re-enters its queue after every step ---------------------------------
def _llm_core(policy: str = "priority", n_devices: int = 1, max_batch: int = 1) -> tuple[Core, object]:
    models = {"llm": ModelSpec("llm", "onnxruntime", "llm.onnx", (tensor("input_ids", "INT64", (1, -1)),),
                               (tensor("output_ids", "INT64", (1, -1)),), "llm", options={"max_batch": max_batch}),
              "cnn": ModelSpec("cnn", "onnxruntime", "cnn.onnx", (tensor("x"),), (tensor("y"),))}
    chat = validate_pipeline(PipelineSpec("chat", (tensor("input_ids", "INT64", (1, -1)),),
                                          (StageSpec("llm", "llm", {"input_ids": "input:input_ids"}),),
                                          {"output_ids": "llm.output_ids"}), models)
    devices = [DeviceSpec(f"cpu{i}", "cpu", "onnxruntime", 1) for i in range(n_devices)]
    return Core(devices, models, policy), chat


def test_step_requeues_the_stage_so_urgent_work_goes_between_tokens() -> None:
    """After a step the LLM run is queued again, and a more urgent request runs before its next step."""
    from heddle.scheduler import Request

    core, chat = _llm_core()
    core.submit(Request("gen", chat, 1, 0.0), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["gen"]
    core.submit(Request("urgent", chat, 4, 0.1), 0.1)
    assert core.on_stage_step("gen", "llm", 0.2) is True
    assert core.request("gen").runs["llm"].state is RunState.READY
    assert [d.request_id for d in core.schedule(0.2).dispatches] == ["urgent"]
    core.on_stage_done("urgent", "llm", 0.3)
    plan = core.schedule(0.3)
    assert [d.request_id for d in plan.dispatches] == ["gen"] and plan.finished[0].request_id == "urgent"
    core.on_stage_done("gen", "llm", 0.4)
    assert [f.request_id for f in core.schedule(0.4).finished] == ["gen"]


def test_cancel_during_a_step_ends_the_request_once_and_stops_the_stage() -> None:
    """Cancelled mid-step: one Finished at once, and the step's end reports False (drop the sequence)."""
    from heddle.scheduler import Request

    core, chat = _llm_core()
    core.submit(Request("gen", chat, 1, 0.0), 0.0)
    core.schedule(0.0)
    assert core.cancel("gen", 0.1)
    finished = core.schedule(0.1).finished
    assert [(f.request_id, f.outcome) for f in finished] == [("gen", Outcome.CANCELLED)]
    assert core.on_stage_step("gen", "llm", 0.2) is False
    plan = core.schedule(0.2)
    assert not plan.finished and not plan.dispatches and core.stats().running == {"cpu0": 0}


def test_a_step_continues_on_another_device_when_its_own_goes_away() -> None:
    """A generation whose device is taken out of rotation mid-step takes its next step elsewhere."""
    from heddle.scheduler import Request

    core, chat = _llm_core("fcfs", n_devices=2)
    core.submit(Request("gen", chat, 1, 0.0), 0.0)
    assert core.schedule(0.0).dispatches[0].device == "cpu0"
    core.set_device_health("cpu0", False, 0.05)
    assert core.on_stage_step("gen", "llm", 0.1) is True
    assert [(d.request_id, d.device) for d in core.schedule(0.1).dispatches] == [("gen", "cpu1")]


def test_steps_of_one_llm_share_a_slot_up_to_max_batch() -> None:
    """With max_batch 2, two of three generations step together in one slot; a cancelled rider
    frees nothing twice and the third takes its place at the next step."""
    from heddle.scheduler import Request

    core, chat = _llm_core("fcfs", max_batch=2)
    for i in range(3):
        core.submit(Request(f"g{i}", chat, 1, 0.01 * i), 0.01 * i)
    assert [d.request_id for d in core.schedule(0.1).dispatches] == ["g0", "g1"]
    assert core.stats().running == {"cpu0": 1} and core.free_slots("cpu0") == 0
    assert core.cancel("g1", 0.15)
    assert core.on_stage_step("g0", "llm", 0.2) is True
    assert core.on_stage_step("g1", "llm", 0.2) is False
    plan = core.schedule(0.2)
    assert [d.request_id for d in plan.dispatches] == ["g0", "g2"]
    assert [f.request_id for f in plan.finished] == ["g1"]
    core.on_stage_done("g2", "llm", 0.3)
    core.on_stage_done("g0", "llm", 0.3)
    assert sorted(f.request_id for f in core.schedule(0.3).finished) == ["g0", "g2"]
    assert core.stats().running == {"cpu0": 0} and core.free_slots("cpu0") == 1
