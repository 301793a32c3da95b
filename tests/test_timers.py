"""The shared timers behind the body deadline and the handler timeout (``_timers``)."""

from __future__ import annotations

import asyncio
import functools
import sys

import pytest

from runflow_callbacks._timers import Deadline, Later, Sweeper


async def test_a_deadline_cancels_its_task_once_due_and_can_be_taken_back() -> None:
    deadline = Deadline(0.02)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.expired
    deadline.taken_back()
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0
    await asyncio.sleep(0)  # the task goes on


async def test_a_disarmed_deadline_never_fires() -> None:
    deadline = Deadline(0.01)
    deadline.cancel()
    deadline.cancel()  # idempotent
    await asyncio.sleep(0.05)
    assert not deadline.expired


async def test_an_earlier_timer_armed_after_a_later_one_fires_first() -> None:
    fired: list[str] = []
    late = Later(5, lambda: fired.append("late"))
    Later(0.01, lambda: fired.append("early"))
    await asyncio.sleep(0.1)
    assert fired == ["early"]
    late.cancel()
    assert Sweeper.of(asyncio.get_running_loop()).pending == {}


async def test_many_timers_share_one_handle_and_fire_in_any_order_of_arming() -> None:
    fired: list[int] = []
    for number in (3, 1, 2):
        Later(number / 100, functools.partial(fired.append, number))
    sweeper = Sweeper.of(asyncio.get_running_loop())
    assert len(sweeper.pending) == 3
    await asyncio.sleep(0.2)
    assert sorted(fired) == [1, 2, 3]
    assert sweeper.pending == {}


def test_each_event_loop_has_its_own_sweeper() -> None:
    async def sweeper() -> Sweeper:
        return Sweeper.of(asyncio.get_running_loop())

    first, second = asyncio.run(sweeper()), asyncio.run(sweeper())
    assert first is not second
    assert first.loop is not second.loop
