"""twill: heddle's own policy — affinity-aware mapping, migration and priority-aware freezing.

After Twill (arXiv 2507.00491), whose exact rules are not public; these are heddle's:
- order: feasible runs by slack weighted by priority; then, by priority, runs of requests that
  can no longer meet their deadline beside best-effort runs (no deadline), a hopeless run
  first at equal priority. A hopeless urgent run never waits behind lower-priority best-effort
  work: "hopeless" is a prediction from noisy estimates, and a frame held behind a long LLM
  step is then certain to miss.
- mapping: each ready run's finish time is predicted on every device it can run on (the
  queued work ranked ahead of it, the running work left, its own estimate). Of the devices
  that meet its sub-deadline (by the tail estimate) it goes to the slowest ("fit"): CNN work
  lands on DLAs and LLM decode on CPU clusters when they are fast enough, which leaves the
  GPU to what only the GPU runs on time. Devices of one kind and backend (two CPU clusters,
  two DLAs) count as one speed class: among them the earliest finish wins, since picking the
  "slowest" of identical devices would chase estimate noise and pile work onto one of them.
  No device on time: the earliest finish. No deadline (best effort): the least-loaded device,
  the fastest among equally loaded ones, as the baselines place it (a finish-time mapping of
  tiny best-effort stages took the GPU from the work only it runs fast, measured live).
  mapping="energy" picks the most frugal on-time device instead.
- migration: an idle device takes a run queued elsewhere when it would finish it earlier by
  a margin and the run would be late where it is or costs less energy there; and a run without
  a deadline when it has nothing of its own ready (work-conserving for best effort).
- freezing: a lower-priority run is held in its queue when starting it now would make an
  imminent higher-priority stage (inputs being computed right now) miss its deadline, and
  released as soon as that is no longer so. The core's aging bound beats freezing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from heddle.scheduler.dag import Pipeline
from heddle.scheduler.fanout_stats import expected_factor
from heddle.scheduler.policies import CoreView
from heddle.scheduler.state import Request, RunState, StageRun, device_of, started_s_of
from heddle.scheduler.twill_forecast import TwillForecast

__all__ = ["TwillPolicy"]

# A device a run may go to: (finish, on_time, energy, run time, config index, device).
_Option = tuple[float, bool, float, float, int, str]
# Among devices that meet a run's sub-deadline: the slowest ("fit": keeps fast devices for
# work only they can do on time), the most frugal ("energy"), or the first to finish.
MAPPINGS = ("fit", "energy", "fastest")


class TwillPolicy(TwillForecast):
    name = "twill"
    steal_when_busy = True
    steal_scan = 8  # best-ranked runs of each other queue an idle device considers taking

    def __init__(self, max_wait_s: float | None = None, migrate_margin: float = 0.1,
                 min_margin_s: float = 1e-4, freeze: bool = True, mapping: str = "fit") -> None:
        super().__init__(max_wait_s)
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown twill mapping {mapping!r}; known: {MAPPINGS}")
        self.migrate_margin = migrate_margin
        self.min_margin_s = min_margin_s
        self.freeze = freeze
        self.mapping = mapping
        self._reserved: dict[str, float] = {}  # device -> deadline of the stage it is held for
        self._reserved_at = math.nan
        # (stealing device, other device) -> (other's queue version, may it take anything queued there)
        self._runnable: dict[tuple[str, str], tuple[tuple[int, int], bool]] = {}

    # ---- mapping ------------------------------------------------------------------------
    def place(self, run: StageRun, devices: list[str], view: CoreView, now: float) -> str:
        if len(devices) == 1:  # every rule below picks among these: no forecast needed
            return devices[0]
        if not math.isfinite(run.sub_deadline_s):
            # Best effort: the least-loaded device, the fastest of equally loaded ones. The earliest
            # predicted finish chased the estimates of tiny stages measured under load (a 0.06 ms
            # classifier timed at 1.4 ms on the busy GPU device), put them before the GPU's queue of
            # encoders only it runs fast, and cost the live box's background 12% of its throughput.
            return min(devices, key=lambda d: (view.load(d), view.estimate_s(run.model, d)))
        options: list[_Option] = []
        for i, device in enumerate(devices):
            mean_s = view.estimate_s(run.model, device)
            finish = now + self._wait_ahead_s(view, run, device, now) + mean_s
            meets = finish - mean_s + view.tail_s(run.model, device) <= run.sub_deadline_s
            options.append((finish, meets, view.power_w(run.model, device) * mean_s, mean_s, i, device))
        on_time = [o for o in options if o[1]]
        if on_time and math.isfinite(run.sub_deadline_s):
            if self.mapping == "energy":
                return min(on_time, key=lambda o: (o[2], o[0], o[4]))[5]
            if self.mapping == "fit":  # the slowest class of device that still makes it
                return self._fit(on_time, view, run.model)
        return min(options, key=lambda o: (o[0], o[4]))[5]

    @staticmethod
    def _fit(on_time: list[_Option], view: CoreView, run_model: str) -> str:
        """Of the on-time options, the slowest speed class (devices of one kind and backend, by
        their fastest estimate at full speed); within it, the earliest finish. A GPU the power
        controller has slowed is still the GPU: ranked by its throttled speed it would pass for
        the slow class and draw the work the DLA is there for, into the queue of what only
        the GPU can run."""
        classes: dict[tuple[str, str], list[_Option]] = {}
        for option in on_time:
            spec = view.devices[option[5]]
            classes.setdefault((spec.kind, spec.backend), []).append(option)
        slowest = max(classes.values(), key=lambda c: (min(view.nominal_s(run_model, o[5]) for o in c),
                                                       -min(o[4] for o in c)))
        return min(slowest, key=lambda o: (o[0], o[4]))[5]

    def may_steal(self, run: StageRun, device: str, view: CoreView, now: float) -> bool:
        return self._may_steal(run, device, view, now, None)

    def _may_steal(self, run: StageRun, device: str, view: CoreView, now: float,
                   place: tuple[int, float] | None) -> bool:
        """Take a run queued elsewhere if it finishes here earlier by a margin, and it would be
        late there or costs less energy here. A run with no deadline that would wait where it is
        goes to a device with nothing of its own ready (as the baselines steal): best-effort work
        keeps devices busy, a device estimated slow once (a noisy moment) gets measured again
        instead of being shunned on a stale estimate, and a device is not taken from its own work
        for work with no deadline (finish-time steals moved tiny best-effort stages onto the GPU
        device ahead of the encoders only it runs fast: 1,660 migrations a seed on the live box)."""
        here_s = view.estimate_s(run.model, device)
        if self._reserved_at == now and now + here_s > self._reserved.get(device, math.inf):
            return False
        best_effort = not math.isfinite(run.sub_deadline_s)
        if best_effort and any(q.state is RunState.READY for q in view.queued(device)):
            return False
        queued = device_of(run)
        # place: how many READY runs and how much work rank before the run in its queue, when the
        # caller has it (steal_candidates walks that very order), so its key need not be computed
        # and searched for again.
        wait_s = self._wait_ahead_s(view, run, queued, now) if place is None else self._wait(view, queued, *place, now)
        if best_effort:
            return wait_s > 0  # a run its own device starts now stays there
        there_s = view.estimate_s(run.model, queued)
        there = now + wait_s + there_s
        margin = max(self.min_margin_s, self.migrate_margin * here_s)
        if now + here_s + margin >= there:
            return False
        if there - there_s + view.tail_s(run.model, queued) > run.sub_deadline_s:
            return True
        return view.power_w(run.model, device) * here_s < view.power_w(run.model, queued) * there_s

    def steal_candidates(self, device: str, view: CoreView, now: float) -> list[StageRun]:
        """From each other queue, the best-ranked runs this device can run and may take:
        bounded, so an idle device does not weigh every queued run on every pick."""
        found = []
        runs_here: dict[str, bool] = {}
        own_rule = type(self).may_steal is TwillPolicy.may_steal  # a subclass's rule is asked as is

        def can_run(model: str) -> bool:
            if model not in runs_here:
                runs_here[model] = device in view.eligible_devices(model)
            return runs_here[model]

        for other in view.devices:
            # A queue with nothing this device can run need not be ranked (a CPU device never
            # ranks the Python device's queue to find that out).
            if other == device or not view.queued(other) or not self._runs_any(view, device, other, can_run):
                continue
            checked = 0
            for ahead, run, work_s in self.queue_order(view, other, now):
                if checked == self.steal_scan:
                    break
                if can_run(run.model):
                    checked += 1
                    ok = (self._may_steal(run, device, view, now, (ahead, work_s)) if own_rule
                          else self.may_steal(run, device, view, now))
                    if ok:
                        found.append(run)
        return found

    def _runs_any(self, view: CoreView, device: str, other: str, can_run: Callable[[str], bool]) -> bool:
        """Is anything queued on `other` a model `device` can run? Kept per queue version: asked
        for every other queue at every pick of an idle device, and a queue's models change only
        when its version does."""
        stamp = view.queue_version(other)
        known = self._runnable.get((device, other))
        if known is None or known[0] != stamp:
            runnable = any(can_run(m) for m in {q.model for q in view.queued(other)})
            known = self._runnable[(device, other)] = (stamp, runnable)
        return known[1]

    # ---- freezing -----------------------------------------------------------------------
    def hold(self, view: CoreView, now: float) -> set[tuple[str, str]]:
        """Hold lower-priority queued runs that would block an imminent urgent stage."""
        self._reserved, self._reserved_at = {}, now
        if not self.freeze:
            return set()
        held: set[tuple[str, str]] = set()
        # Imminent stages are the waiting dependents of running ones: no need to scan requests.
        seen: set[tuple[str, str]] = set()
        # Downstream chains by (pipeline, stage): requests of one pipeline share them, and no
        # estimate changes within this call (a camera stream has many frames in flight).
        downstream: dict[tuple[int, str], float] = {}
        # A stage is protected by keeping a free slot of a device that can run it; none changes
        # within this call, so a stage whose devices have none is passed over at once (as when
        # every device is busy).
        free = {d for d in view.devices if view.free_slots(d) > 0}
        if not free:
            return held
        can_keep: dict[str, bool] = {}
        busy: dict[str, float] = {}  # device -> until its first slot frees (_busy_s), once per call
        for device in view.devices:
            for running in view.running(device):  # hold() changes nothing it reads
                request = running.request
                if request.finished or request.deadline_s is None:
                    continue
                for name in request.pipeline.dependents[running.stage]:
                    run = request.runs[name]
                    if run.key in seen:
                        continue
                    seen.add(run.key)
                    if run.model not in can_keep:
                        can_keep[run.model] = any(d in free for d in view.eligible_devices(run.model))
                    if not can_keep[run.model]:
                        continue
                    ready_at = _ready_at(view, run, now)
                    if ready_at is not None and ready_at > now:
                        self._protect(view, run, ready_at, now, held, downstream, busy)
        return held

    def _protect(self, view: CoreView, run: StageRun, ready_at: float, now: float,
                 held: set[tuple[str, str]], downstream: dict[tuple[int, str], float],
                 busy: dict[str, float]) -> None:
        assert run.request.deadline_s is not None  # hold() protects stages of requests with one only
        deadline = run.request.deadline_s - _downstream_s(view, run, downstream)
        best: tuple[float, str] | None = None
        for device in view.eligible_devices(run.model):
            busy_s = busy.get(device)
            if busy_s is None:
                busy_s = busy[device] = _busy_s(view, device, now)
            finish = max(ready_at, now + busy_s) + view.tail_s(run.model, device)
            if best is None or finish < best[0]:
                best = (finish, device)
        if best is None or best[0] > deadline:
            return  # hopeless anyway, or another device will do: nothing to protect
        device = best[1]
        if view.free_slots(device) <= 0:
            return
        run_s = view.tail_s(run.model, device)
        self._reserved[device] = min(self._reserved.get(device, math.inf), deadline - run_s)
        for other in view.queued(device):
            if (other.state in (RunState.READY, RunState.FROZEN)
                    and other.request.priority < run.request.priority
                    and max(ready_at, now + view.tail_s(other.model, device)) + run_s > deadline):
                held.add(other.key)


def _busy_s(view: CoreView, device: str, now: float) -> float:
    """Until the first slot of the device frees (0 if one is free now)."""
    if view.free_slots(device) > 0:
        return 0.0
    return min(view.left_s(r, now) for r in view.running(device))


def _ready_at(view: CoreView, run: StageRun, now: float) -> float | None:
    """When a waiting stage's inputs will all exist, if every missing one is being computed
    now; None for stages that are not waiting or depend on work not yet started."""
    if run.state is not RunState.WAITING:
        return None
    request: Request = run.request
    ready_at = now
    for dep in request.pipeline.depends_on[run.stage]:
        other = request.runs[dep]
        if other.state is RunState.RUNNING:
            ready_at = max(ready_at, started_s_of(other) + view.estimate_s(other.model, device_of(other)))
        elif other.state is not RunState.DONE:
            return None
    return ready_at


def _stage_s(view: CoreView, model: str, pipeline: Pipeline, stage: str) -> float:
    """A stage's best-case time still to come: a map stage's expected element runs over its devices,
    a conditional one at its run rate (scheduler/fanout_stats.py)."""
    best = view.best_estimate_s(model)
    if stage in pipeline.maps or stage in pipeline.whens:
        best *= expected_factor(pipeline, stage, view.fanout, max(1, len(view.eligible_devices(model))))
    return best


def _downstream_s(view: CoreView, run: StageRun, memo: dict[tuple[int, str], float]) -> float:
    """Longest chain of best-case estimates after this stage (it excluded); memo is keyed by
    (pipeline object, stage) and must not outlive the estimates it was filled with."""
    pipeline = run.request.pipeline
    known = memo.get((id(pipeline), run.stage))
    if known is not None:  # most calls: another frame of the same pipeline asked already
        return known

    def after(stage: str) -> float:
        key = (id(pipeline), stage)  # the pipeline object requests share; alive for the call
        if key not in memo:
            memo[key] = max((_stage_s(view, run.request.runs[n].model, pipeline, n) + after(n)
                             for n in pipeline.dependents[stage]), default=0.0)
        return memo[key]

    return after(run.stage)
