"""Hand a recorded callback to an existing queue engine, keeping exactly-once.

With a hand-off, :class:`~runflow_callbacks.processing.CallbackProcessor` (and so
:class:`~runflow_callbacks.receiver.CallbackReceiver`) answers a delivery ``recorded`` (200)
only once the callback is durably in the store *and* a job for it is in your queue; a worker
of that queue engine then runs the handler through the same exactly-once engine (claim with a
lease and fencing token, lease renewal while the handler runs, ``complete`` or ``fail``)::

    hand_off = CeleryHandOff(celery_app)                      # runflow_callbacks.handoff.celery
    receiver = CallbackReceiver(secrets=[...], store=store, hand_off=hand_off)

The job carries the idempotency key only (the worker reads the body from the store), and is
named by it where the engine has job ids (Celery: the task id is the key). What each case is
answered:

=====================================  =====================================================
case                                   answer
=====================================  =====================================================
recorded and queued                    200 ``recorded``
recorded, the queue refused the job    503 ``queue_unavailable``: Runflow retries, and the
                                       retry queues it again (the record stands)
the store failed                       503 ``store_unavailable``: nothing was acknowledged
duplicate, not processed yet           200 ``recorded``, queued again (same job id: the
                                       second job finds it processed, or running, and does
                                       not run the handler again)
duplicate of a processed one           200 ``duplicate``, nothing queued
dead                                   200 ``dead``, nothing queued
=====================================  =====================================================

Two engines ship: :mod:`runflow_callbacks.handoff.celery` (any store; a job published after
the record committed) and :mod:`runflow_callbacks.handoff.procrastinate` (the PostgreSQL store
only; the job deferred in the very transaction that records the callback, so "recorded" and
"queued" cannot disagree). Another engine implements :class:`HandOff`, usually by subclassing
:class:`QueueHandOff` and writing :meth:`QueueHandOff.enqueue`; its worker calls
:meth:`CallbackProcessor.run_queued <runflow_callbacks.processing.CallbackProcessor.run_queued>`
with the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from runflow_callbacks.errors import ConfigurationError, HandOffError
from runflow_callbacks.handlers import HandlerTable
from runflow_callbacks.options import resolve
from runflow_callbacks.stores import open_store

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from runflow_callbacks.handlers import Handler
    from runflow_callbacks.options import ReceiverArgs, ReceiverOptions
    from runflow_callbacks.stores import Admission, CallbackStore, IncomingCallback, State

__all__ = ["QUEUED_STATES", "HandOff", "HandOffError", "QueueHandOff", "worker_parts"]

#: The states a (duplicate) delivery queues a job for: not yet processed, and not dead.
QUEUED_STATES: Final[frozenset[State]] = frozenset({"received", "failed", "processing"})


@runtime_checkable
class HandOff(Protocol):
    """How a callback gets from the store into a queue engine."""

    async def admit(
        self, store: CallbackStore, incoming: IncomingCallback, *, now: datetime
    ) -> Admission:
        """Record ``incoming`` in ``store`` as ``record_and_claim(..., lease=None)`` does and,
        when its state is one of :data:`QUEUED_STATES`, queue a job for its key.

        Raises :class:`HandOffError` when the job could not be queued, and
        :class:`~runflow_callbacks.errors.StoreError` when the store failed.
        """
        ...


class QueueHandOff:
    """A hand-off that queues the job once the record is committed: write :meth:`enqueue`.

    A job lost between the two (a crash, a broker that refused it) is queued again by the
    next delivery of the callback: the answer was 503, so Runflow retries.
    """

    async def admit(
        self, store: CallbackStore, incoming: IncomingCallback, *, now: datetime
    ) -> Admission:
        admission = await store.record_and_claim(incoming, now=now, lease=None)
        if admission.state in QUEUED_STATES:
            await self.enqueue(incoming.key)
        return admission

    async def enqueue(self, key: str) -> None:
        """Queue the job of ``key``; raise :class:`HandOffError` when the engine refuses it."""
        raise NotImplementedError


def worker_parts(
    engine: str,
    *,
    store: str | Callable[[], CallbackStore],
    handlers: HandlerTable | Handler | str | None,
    namespace: str,
    options: ReceiverOptions | None,
    changes: ReceiverArgs,
) -> tuple[Callable[[], CallbackStore], HandlerTable, ReceiverOptions]:
    """What a queue engine's worker task needs, from :func:`make_task`'s arguments: a function
    opening the store, the handler table, and the checked options (sync mode only)."""
    chosen = resolve(options, changes, who="make_task")
    if chosen.mode != "sync":
        raise ConfigurationError(f"the {engine} task runs each callback as it comes: mode='sync'")
    if isinstance(handlers, str):
        from runflow_callbacks.app import load_handler  # noqa: PLC0415 - only for a spec string

        handlers = load_handler(handlers, flag="handlers")
    table = handlers if isinstance(handlers, HandlerTable) else HandlerTable(handlers)
    if not isinstance(store, str):
        return store, table, chosen
    url = store

    def make_store() -> CallbackStore:
        return open_store(url, namespace=namespace)

    return make_store, table, chosen
