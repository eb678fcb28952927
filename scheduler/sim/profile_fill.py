"""A profile measured under load, filled in where it is blind: the (model, device) pairs its load never
ran, taken from an isolated profile of the same box and slowed as the load slowed that device.

Why (issue #15, sim-to-live): `heddle profile --under-load` records the runs its server made under
its own policy, so a pair that policy never used (fcfs never put the frames' CNN on the emulated
gpu0) has no entry, and a replay lets a model run only where the profile has it. A policy that does
use the pair live (twill: half the frames on gpu0) is then replayed on fewer devices than it had.
A filled pair on a device under a CPU-bandwidth cap also waits for the cap as that load made it wait:
alone, a short run mostly finds quota left; under a load that spends the quota every period, it
waits for the next one (cls on the emulated cpu0: 0.5 ms alone, 10.7 ms under twill live).
Pure: profiles in, a profile out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from heddle.scheduler.profiles import ProfileEntry
from heddle.scheduler.sim.tracefile import MeasuredProfile

__all__ = ["bandwidth_wait_s", "fill_missing", "load_factors", "spread_factors", "utilisation"]


def load_factors(measured: MeasuredProfile, isolated: MeasuredProfile) -> dict[str, float]:
    """Per device, how much slower its runs were under load: its summed mean run times under load over
    its summed isolated ones, across the models both profiles measured there at level 0 (a sum, so
    the long runs that dominate a device's time set it, not a sub-millisecond model's fixed costs);
    1 for a device with no model in common."""
    under: dict[str, float] = {}
    alone: dict[str, float] = {}
    for (model, device, level), entry in measured.entries.items():
        base = isolated.entries.get((model, device, level))
        if level == 0 and base is not None and base.latency_s > 0:
            under[device] = under.get(device, 0.0) + entry.latency_s
            alone[device] = alone.get(device, 0.0) + base.latency_s
    devices = {d for _, d, _ in isolated.entries} | {d for _, d, _ in measured.entries}
    return {d: (under[d] / alone[d] if alone.get(d) else 1.0) for d in sorted(devices)}


def utilisation(measured: MeasuredProfile) -> dict[str, float]:
    """Per device, the share of the load's window its measured runs filled (at most 1); {} without a window."""
    if not measured.window_s:
        return {}
    slots = {d.id: d.slots for d in measured.devices}
    busy: dict[str, float] = {}
    for (_, device, _), runs in measured.samples.items():
        busy[device] = busy.get(device, 0.0) + sum(runs)
    return {d: min(1.0, b / (measured.window_s * slots.get(d, 1))) for d, b in sorted(busy.items())}


def bandwidth_wait_s(measured: MeasuredProfile, bandwidth: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Per capped device, what a short run waits under that load beyond its time alone: a group whose
    quota the load spends waits (1 - share) x period for the next period, twice per run (the worker
    starts it and reports it under the cap), as often as the device is busy (its utilisation)."""
    busy = utilisation(measured)
    return {d: busy.get(d, 0.0) * (1 - share) * period_s for d, (share, period_s) in sorted(bandwidth.items())}


def spread_factors(measured: MeasuredProfile, isolated: MeasuredProfile) -> dict[str, float]:
    """Per device, how much wider its runs' spread was under load: summed (tail - mean) under load over
    summed (tail - mean) alone, on the models both measured at level 0 (at least 1; 1 where none):
    a load that stalls a device now and then widens every model's tail there, not only its mean."""
    under: dict[str, float] = {}
    alone: dict[str, float] = {}
    for (model, device, level), entry in measured.entries.items():
        base = isolated.entries.get((model, device, level))
        if level == 0 and base is not None and entry.tail_s is not None and base.tail_s is not None:
            under[device] = under.get(device, 0.0) + max(0.0, entry.tail_s - entry.latency_s)
            alone[device] = alone.get(device, 0.0) + max(0.0, base.tail_s - base.latency_s)
    return {d: max(1.0, under[d] / alone[d]) if alone.get(d) else 1.0 for d in sorted(under)}


def fill_missing(measured: MeasuredProfile, isolated: MeasuredProfile,
                 bandwidth: Mapping[str, tuple[float, float]] | None = None) -> MeasuredProfile:
    """`measured` plus every (model, device, level) only `isolated` has, its time (mean, tail and each
    sample) slowed by the device's load factor and spread by its spread factor, plus on a capped device
    (the trace's `bandwidth`) the wait the load adds to a run within one period's quota (a longer run
    was throttled alone too: it gets the quota's share of the wait); its power as measured alone."""
    bandwidth = bandwidth or {}
    factors, waits = load_factors(measured, isolated), bandwidth_wait_s(measured, bandwidth)
    spreads = spread_factors(measured, isolated)

    def under_load(key: tuple[str, str, int], alone_s: float) -> float:
        share, period_s = bandwidth.get(key[1], (1.0, 1.0))
        quota_s = share * period_s
        mean_s = isolated.entries[key].latency_s
        # The mean slows by the load factor; a run's distance from it widens by the spread factor
        # (a run below the mean is never made faster than it ran alone).
        slowed = max(alone_s, mean_s * factors.get(key[1], 1.0) + (alone_s - mean_s) * spreads.get(key[1], 1.0))
        return slowed + waits.get(key[1], 0.0) * min(1.0, quota_s / max(alone_s, 1e-9))

    entries, samples = dict(measured.entries), dict(measured.samples)
    for key, base in isolated.entries.items():
        if key in entries:
            continue
        entries[key] = ProfileEntry(under_load(key, base.latency_s), base.power_w,
                                    None if base.tail_s is None else under_load(key, base.tail_s))
        samples[key] = tuple(under_load(key, s) for s in isolated.samples.get(key, ()))
    ops = {**isolated.ops, **{m: o for m, o in measured.ops.items() if o}}
    known = {d.id for d in measured.devices}
    devices = measured.devices + tuple(d for d in isolated.devices if d.id not in known)
    return replace(measured, devices=devices, entries=entries, samples=samples, ops=ops)
