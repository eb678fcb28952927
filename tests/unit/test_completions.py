"""Completions: what worker threads finish reaches the event loop in order, in batches that share
one wake-up, and nothing is lost or raised once the loop has closed."""

from __future__ import annotations

import asyncio
import threading

from heddle.server.runtime.stage_runner import Completions


class CountingWakeups:
    """The real loop, counting how often a thread wakes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, callback, *args):
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)


def test_ends_posted_before_the_loop_turns_share_one_wakeup() -> None:
    """Five ends posted from a worker thread while the loop is busy run in order, after one wake-up."""
    async def main() -> tuple[list[int], int]:
        waker = CountingWakeups(asyncio.get_running_loop())
        completions = Completions(lambda: waker)  # type: ignore[arg-type, return-value]
        ran: list[int] = []
        worker = threading.Thread(target=lambda: [completions.post(lambda i=i: ran.append(i)) for i in range(5)])
        worker.start()
        worker.join()  # the loop has not turned since: all five wait for it
        while len(ran) < 5:
            await asyncio.sleep(0)
        return ran, waker.wakeups
    assert asyncio.run(main()) == ([0, 1, 2, 3, 4], 1)


def test_an_end_after_a_drain_wakes_the_loop_again() -> None:
    """Once a batch ran, the next end posted wakes the loop anew and runs too."""
    async def main() -> tuple[list[str], int]:
        waker = CountingWakeups(asyncio.get_running_loop())
        completions = Completions(lambda: waker)  # type: ignore[arg-type, return-value]
        ran: list[str] = []
        for name in ("first", "second"):
            worker = threading.Thread(target=completions.post, args=(lambda name=name: ran.append(name),))
            worker.start()
            worker.join()
            while name not in ran:
                await asyncio.sleep(0)
        return ran, waker.wakeups
    assert asyncio.run(main()) == (["first", "second"], 2)


def test_an_end_posted_after_the_loop_closed_is_dropped() -> None:
    """A run that ends after the server's loop closed (shutdown) neither raises nor runs."""
    loop = asyncio.new_event_loop()
    loop.close()
    completions = Completions(lambda: loop)
    ran: list[int] = []
    completions.post(lambda: ran.append(1))
    assert ran == []
