"""What is assumed of a run before it is measured: a model graph's roofline prior on each kind of
device, which devices can run a graph's op types, and how a pass grows with its batch rows.

Apart from profiles.py, which owns the estimates that measured runs refine: these are pure
functions of a graph summary, a device spec and a row count, with no state, and the power
ladder, the simulator and the config reload use them without a profile table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "BATCH_FIXED_SHARE", "DeviceSpeed", "GraphSummary", "batch_scale", "compatible", "curve_scale",
    "device_speed", "prior_latency_s",
]

# The share of a one-row pass that a batched pass pays once whatever its rows (session call,
# launch, weights read): time(b) = t1 * (a + (1 - a) * b). An ASSUMED default until passes of
# that size are measured. 0.5 sits between a small memory-bound model on one core (nearly all
# fixed cost) and a compute-bound one (nearly linear); guessing high for big batches errs toward
# dispatching a forming batch earlier, never toward missing a deadline by waiting.
BATCH_FIXED_SHARE = 0.5


def batch_scale(rows: int, fixed_share: float = BATCH_FIXED_SHARE) -> float:
    """A pass of `rows` rows relative to a pass of one row (1.0 at rows = 1)."""
    return fixed_share + (1.0 - fixed_share) * max(rows, 1)


def curve_scale(curve: Mapping[int, float] | None, rows: int) -> float:
    """A pass of `rows` rows relative to one row, from a measured curve {rows: time(rows) / time(1)}:
    exact at a measured size, linear between the two measured sizes around it, and past the largest
    on the line through the last two (a pass grows at least linearly once the cores are full);
    `batch_scale` where nothing was measured."""
    rows = max(rows, 1)
    if not curve:
        return batch_scale(rows)
    full = {1: 1.0, **curve}
    if rows in full:
        return full[rows]
    points = sorted(full.items())
    if len(points) < 2:
        return batch_scale(rows)
    below = [p for p in points if p[0] < rows]
    above = [p for p in points if p[0] > rows]
    (b0, s0), (b1, s1) = (below[-1], above[0]) if above else (points[-2], points[-1])
    return max(s1 + (s1 - s0) / (b1 - b0) * (rows - b1), 0.0) if b1 != b0 else s1


@dataclass(frozen=True, slots=True)
class GraphSummary:
    """What the model interpreter reads from a graph: no onnx types, so scheduler/ stays pure."""

    params: int
    layers: int  # compute nodes (every node but shape plumbing)
    op_counts: Mapping[str, int]
    flops: float  # per inference, batch 1
    bytes_moved: float  # weights read plus activations read and written

    @property
    def op_types(self) -> frozenset[str]:
        return frozenset(self.op_counts)


@dataclass(frozen=True, slots=True)
class DeviceSpeed:
    """A device's roofline: sustained FLOP/s and bytes/s, fixed costs, clock per DVFS level."""

    flops_per_s: float
    bytes_per_s: float
    overhead_s: float = 50e-6  # launch and copy cost of one run
    per_layer_s: float = 2e-6  # kernel launch per layer
    level_clock: tuple[float, ...] = (1.0,)  # clock relative to level 0

    def clock(self, level: int) -> float:
        return self.level_clock[min(level, len(self.level_clock) - 1)]


# Sustained (not peak) figures for an unknown device of each kind: a prior only, refined by
# the first measured runs. Order of magnitude from ORT on one x86 core and small GPUs.
_KIND_SPEEDS = {
    "cpu": DeviceSpeed(flops_per_s=8e9, bytes_per_s=8e9),
    "gpu": DeviceSpeed(flops_per_s=2e12, bytes_per_s=100e9, overhead_s=200e-6, per_layer_s=8e-6),
    "dla": DeviceSpeed(flops_per_s=1e12, bytes_per_s=50e9, overhead_s=300e-6, per_layer_s=10e-6),
    "npu": DeviceSpeed(flops_per_s=1e12, bytes_per_s=50e9, overhead_s=300e-6, per_layer_s=10e-6),
}


def device_speed(device: DeviceSpec) -> DeviceSpeed:
    """The device's declared speed (options["speed"]: DeviceSpeed fields), else its kind's."""
    declared = device.options.get("speed")
    base = _KIND_SPEEDS.get(device.kind, _KIND_SPEEDS["cpu"])
    if not declared:
        return base
    fields = {k: declared.get(k, getattr(base, k)) for k in DeviceSpeed.__dataclass_fields__}
    fields["level_clock"] = tuple(fields["level_clock"])
    return DeviceSpeed(**fields)


def prior_latency_s(summary: GraphSummary, speed: DeviceSpeed, level: int = 0) -> float:
    """Roofline prior: fixed costs plus the slower of compute and memory traffic."""
    clock = speed.clock(level)
    compute_s = summary.flops / (speed.flops_per_s * clock)
    memory_s = summary.bytes_moved / speed.bytes_per_s  # memory clock is not the DVFS knob
    return speed.overhead_s + summary.layers * speed.per_layer_s / clock + max(compute_s, memory_s)


def compatible(model_ops: Iterable[str], device: DeviceSpec) -> bool:
    """Can `device` run a graph made of these op types? Devices declare `unsupported_ops`
    (a deny list, e.g. a DLA's LayerNormalization/Erf) and/or `supported_ops` (an allow list)."""
    ops = set(model_ops)
    if ops & set(device.options.get("unsupported_ops", ())):
        return False
    allowed = device.options.get("supported_ops")
    return allowed is None or ops <= set(allowed)
