"""How the queue index (scheduler/queues.py) takes the best READY run of a set of groups without
building every group head's whole key: by the keys it keeps (a key that is the group order), by
the key's first component and the tail (least_slack's key_value), or by whole keys with the walk
over blocks whose keys computed from `now` may round to one value."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from heddle.scheduler.policies import SortKey, tail
from heddle.scheduler.state import StageRun

if TYPE_CHECKING:
    from heddle.scheduler.queues import _Group, _Sorted

__all__ = ["best_by_order", "best_by_value", "tied_best"]


def best_by_order(groups: Iterable[_Group]) -> StageRun | None:
    """_best for a policy whose key is its group order: the keys kept compare as rank would."""
    best: tuple[SortKey, StageRun] | None = None
    for group in groups:
        at = group.by_order.first_ready()
        if at is not None and (best is None or group.by_order.keys[at] < best[0]):
            best = (group.by_order.keys[at], group.by_order.runs[at])
    return None if best is None else best[1]


def best_by_value(groups: Iterable[_Group], value: Callable[[StageRun], float]) -> StageRun | None:
    """_best for a policy that gives its key's first component (key_value; the rest is the tail),
    with tied_best's walk over blocks that may round to the head's value."""
    best: tuple[float, SortKey, StageRun] | None = None
    for group in groups:
        order = group.by_order
        i = order.first_ready()
        if i is None:
            continue
        head = order.runs[i]
        v = value(head)
        if best is not None and v > best[0]:
            continue  # every later run of the group has a value at least v's
        candidate = (v, tail(head), head)
        i = order.first_ready(bisect.bisect_right(order.keys, (order.keys[i][0], math.inf)))
        while i is not None and value(order.runs[i]) == v:
            run = order.runs[i]
            if tail(run) < candidate[1]:
                candidate = (v, tail(run), run)
            i = order.first_ready(bisect.bisect_right(order.keys, (order.keys[i][0], math.inf)))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return None if best is None else best[2]


def tied_best(order: _Sorted, at: int, head: tuple[SortKey, StageRun], rank: Callable[[StageRun], SortKey],
               value: Callable[[StageRun], float] | None = None) -> tuple[SortKey, StageRun]:
    """A key computed from `now` is monotone in the order's first component, but two runs whose
    first components differ may still round to one key, and then the later in the order may win
    on its tail. So the first READY run of each following block of equal first components is
    ranked while its key's value equals the head's; runs within a block keep the order's tail
    order (no deadline: every such run ties at inf, and one look at the block settles it)."""
    keys, runs = order.keys, order.runs
    best = head
    i = order.first_ready(bisect.bisect_right(keys, (keys[at][0], math.inf)))
    while i is not None:
        run = runs[i]
        if value is not None and value(run) != head[0][1]:  # what key[:2] would say, for less
            break
        key = rank(run)
        if key[:2] != head[0][:2]:  # (1, first component): the order holds from here on
            break
        if key < best[0]:
            best = (key, run)
        i = order.first_ready(bisect.bisect_right(keys, (keys[i][0], math.inf)))
    return best
