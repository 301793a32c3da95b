"""Retention: prune old finished callbacks in the background, keeping tombstones.

``runflow-callbacks serve --retention 7d`` runs :func:`keep_pruning` for as long as it serves;
a library user runs it in the application's lifespan::

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with pruning(store, retention=timedelta(days=7)):
            yield

Each pass calls the store's ``prune``: processed and dead callbacks last updated more than
``retention`` ago lose their body and headers but keep a tombstone (key, state, counts, times),
so a later delivery is still answered as a duplicate and its handler does not run again; the
tombstones themselves go ``tombstone_retention`` after their last update (90 days unless told
otherwise: a manual redelivery later than that runs the handler again). A pass runs at start
and then every ``retention / 10`` (at least every hour, at most every second); several replicas
pruning one store is harmless (a pass that finds nothing changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from runflow_callbacks._time import utc_now
from runflow_callbacks.defaults import DEFAULT_TOMBSTONE_RETENTION
from runflow_callbacks.errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from datetime import datetime

    from runflow_callbacks.stores import CallbackStore, Pruned

__all__ = ["check_retention", "keep_pruning", "prune_once", "pruning"]

logger = logging.getLogger("runflow_callbacks.retention")

_LONGEST_PAUSE = timedelta(hours=1)
_SHORTEST_PAUSE = timedelta(seconds=1)


def check_retention(retention: timedelta, tombstone_retention: timedelta) -> None:
    """Retention is a positive duration; tombstones are kept at least as long."""
    given: tuple[object, object] = (retention, tombstone_retention)  # callers may be untyped
    if not isinstance(given[0], timedelta) or given[0] <= timedelta(0):
        raise ConfigurationError(f"retention must be a positive timedelta, not {retention!r}")
    if not isinstance(given[1], timedelta) or given[1] < given[0]:
        raise ConfigurationError(
            "tombstone_retention must be a timedelta no shorter than retention"
        )


async def prune_once(
    store: CallbackStore,
    *,
    retention: timedelta,
    tombstone_retention: timedelta = DEFAULT_TOMBSTONE_RETENTION,
    now: datetime | None = None,
) -> Pruned:
    """One retention pass over ``store`` (what ``inbox prune --older-than`` does)."""
    check_retention(retention, tombstone_retention)
    moment = utc_now() if now is None else now
    return await store.prune(
        before=moment - retention, now=moment, tombstones_before=moment - tombstone_retention
    )


async def keep_pruning(
    store: CallbackStore,
    *,
    retention: timedelta,
    tombstone_retention: timedelta = DEFAULT_TOMBSTONE_RETENTION,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Prune ``store`` now and then periodically, until cancelled; a store error is logged
    and the next pass tries again."""
    check_retention(retention, tombstone_retention)
    pause = min(max(retention / 10, _SHORTEST_PAUSE), _LONGEST_PAUSE).total_seconds()
    while True:
        try:
            result = await prune_once(
                store, retention=retention, tombstone_retention=tombstone_retention, now=clock()
            )
        except StoreError as error:
            logger.warning("retention: could not prune the store: %s", error)
        else:
            if result.pruned or result.removed:
                logger.info(
                    "retention: pruned %d callback(s), removed %d tombstone(s)",
                    result.pruned,
                    result.removed,
                )
        await asyncio.sleep(pause)


@contextlib.asynccontextmanager
async def pruning(
    store: CallbackStore,
    *,
    retention: timedelta | None,
    tombstone_retention: timedelta = DEFAULT_TOMBSTONE_RETENTION,
) -> AsyncIterator[None]:
    """Run :func:`keep_pruning` for the duration of the block (nothing when ``retention`` is
    None)."""
    if retention is None:
        yield
        return
    task = asyncio.create_task(
        keep_pruning(store, retention=retention, tombstone_retention=tombstone_retention)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
