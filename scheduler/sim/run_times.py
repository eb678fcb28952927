"""Run-time models for the driver: a profile table with seeded log-normal noise (a shipped
platform), and runs measured on a live machine (a trace's profile, with its dispatch gaps).

Both draw a run's time from a hash of (seed, request, stage): the same run takes the same time
under every policy (common random numbers make policy differences sharper)."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping

from heddle.scheduler.core import Core
from heddle.scheduler.plan import Dispatch
from heddle.scheduler.profiles import ProfileEntry, batch_scale, curve_scale
from heddle.scheduler.sim.driver import RunTimeModel
from heddle.scheduler.sim.tracefile import MeasuredProfile

__all__ = ["MeasuredRuns", "NoisyTable", "noise"]

_MIN_LOCAL_RUNS = 5  # fewer measured runs than this near a moment: draw from all of them


class NoisyTable(RunTimeModel):
    """Each run takes the table's latency for (model, device, the device's level) times a mean-1
    log-normal factor with the model's coefficient of variation; energy_j adds up the table's
    active power x run time of every run."""

    def __init__(self, table: Mapping[tuple[str, str, int], ProfileEntry], cv: Mapping[str, float], seed: int):
        self.table, self.cv, self.seed = table, cv, seed
        self.energy_j = 0.0

    def draw(self, core: Core, run: Dispatch) -> tuple[float, float]:
        """(seconds, active W) of `run` at its device's current level; a batch's pass is the
        table's one-row time on the default batch axis (profiles.batch_scale), its noise its
        first member's."""
        entry = self.table[(run.model, run.device, core.level(run.device))]
        scale = batch_scale(run.rows) if run.batch else 1.0
        return entry.latency_s * scale * noise(self.seed, run.request_id, run.stage, self.cv[run.model]), entry.power_w

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        run_s, power_w = self.draw(core, run)
        self.energy_j += power_w * run_s
        return run_s


def noise(seed: int, request_id: str, stage: str, cv: float) -> float:
    """Mean-1 log-normal run-time factor, a pure function of the run and the seed."""
    if cv <= 0:
        return 1.0
    digest = hashlib.blake2b(f"{seed}/{request_id}/{stage}".encode(), digest_size=16).digest()
    u1 = (int.from_bytes(digest[:8], "little") + 1) / 2.0**64  # (0, 1]
    u2 = int.from_bytes(digest[8:], "little") / 2.0**64
    normal = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller
    sigma = math.sqrt(math.log1p(cv * cv))
    return math.exp(sigma * normal - sigma * sigma / 2)


class MeasuredRuns(RunTimeModel):
    """Each run takes a time drawn from that (model, device, level)'s measured runs, plus the
    device's dispatch gap (the live loop's reaction time, from a profile made from a trace).

    local_window_s: draw from the runs recorded within that many seconds of the same moment of
    the trace (t0_s: the trace time of the replay's 0), so a machine whose speed drifted is
    replayed as fast or slow as it was then."""

    def __init__(self, profile: MeasuredProfile, seed: int, local_window_s: float | None = None, t0_s: float = 0.0):
        self.profile, self.seed, self.local_window_s, self.t0_s = profile, f"{seed}", local_window_s, t0_s

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        near = None if self.local_window_s is None else (now + self.t0_s, self.local_window_s)
        run_s = self.measured_s((run.model, run.device, core.level(run.device)),
                                f"{self.seed}/{run.request_id}/{run.stage}", near)
        if run.batch:  # measured one-row runs, along the measured batch curve (else the default axis)
            run_s *= curve_scale(self.profile.batch_curves.get((run.model, run.device)), run.rows)
        return run_s + self.profile.dispatch_gap_s.get(run.device, 0.0)

    def measured_s(self, key: tuple[str, str, int], run_key: str, near: tuple[float, float] | None) -> float:
        """A measured run time picked by a hash of the run. near: (trace time, window) to draw
        only from runs dispatched around that moment."""
        profile = self.profile
        measured = profile.samples.get(key) or profile.samples.get((key[0], key[1], 0))
        if not measured:
            return profile.entries[(key[0], key[1], 0)].latency_s
        timed = profile.timed.get(key)
        if near is not None and timed is not None:
            at_s, window_s = near
            lo, hi = bisect.bisect_left(timed[0], at_s - window_s), bisect.bisect_right(timed[0], at_s + window_s)
            if hi - lo >= _MIN_LOCAL_RUNS:
                measured = tuple(sorted(timed[1][lo:hi]))
        digest = hashlib.blake2b(run_key.encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "little") / 2.0**64
        return measured[min(int(u * len(measured)), len(measured) - 1)]
