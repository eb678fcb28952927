"""twill and best-effort work (no deadline): placed on the least-loaded device and taken by a
device only when it has nothing of its own ready, so a tiny best-effort stage does not take the
GPU from the queue of work only the GPU runs fast (found live: bench/README, "live_eval.py")."""

from __future__ import annotations

from sched_fixtures import chain, model, validated

from heddle.scheduler import Core, DeviceSpec, Request
from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.state import device_of

MS = 1e-3
BOX = [DeviceSpec("gpu0", "gpu", "onnxruntime"), DeviceSpec("dla0", "dla", "onnxruntime")]
MODELS = {"enc": model("enc", devices=("gpu0",)), "cls": model("cls"), "cnn": model("cnn", devices=("dla0",))}
TIMES = {("enc", "gpu0"): 5 * MS, ("cls", "gpu0"): 1.4 * MS, ("cls", "dla0"): 1.3 * MS, ("cnn", "dla0"): 10 * MS}


def _core() -> tuple[Core, list[Request]]:
    profiles = ProfileTable(table={(m, d, 0): ProfileEntry(s) for (m, d), s in TIMES.items()})
    background = validated(chain("bg", ["enc", "cls"]), MODELS)
    frame = validated(chain("frame", ["cnn"]), MODELS)
    core = Core(BOX, MODELS, "twill", profiles)
    requests = [Request(f"bg{i}", background, 1, i * 0.1 * MS) for i in range(4)]
    for r in requests:  # four best-effort requests: encoder (GPU only) -> classifier (GPU or DLA)
        core.submit(r, r.arrival_s)
    core.submit(Request("f0", frame, 4, 0.5 * MS, 1.0), 0.5 * MS)  # keeps the DLA busy for 10 ms
    return core, requests


def test_a_best_effort_stage_does_not_cut_in_front_of_the_gpus_own_queue():
    """When bg0's encoder ends, its classifier ranks ahead of the queued encoders (it is older) and
    would finish first on the GPU; it goes to the DLA's queue (one run) instead of the GPU's
    (three encoders only the GPU runs), and the GPU starts the next encoder."""
    core, requests = _core()
    first = {d.device: d.request_id for d in core.schedule(0.5 * MS).dispatches}
    assert first == {"gpu0": "bg0", "dla0": "f0"}
    core.on_stage_done("bg0", "s0", 5.5 * MS)
    plan = core.schedule(5.5 * MS)
    assert [(d.request_id, d.stage, d.device) for d in plan.dispatches] == [("bg1", "s0", "gpu0")]
    assert device_of(requests[0].runs["s1"]) == "dla0"


def test_an_idle_device_still_takes_best_effort_work_that_would_wait():
    """Work-conserving for best effort: the DLA, idle with nothing of its own, takes a queued
    classifier from the busy GPU."""
    core, _ = _core()
    core.schedule(0.5 * MS)
    core.on_stage_done("f0", "s0", 2 * MS)  # the DLA frees early, nothing queued for it
    core.on_stage_done("bg0", "s0", 5.5 * MS)
    plan = core.schedule(5.5 * MS)
    assert ("bg0", "s1", "dla0") in [(d.request_id, d.stage, d.device) for d in plan.dispatches]
