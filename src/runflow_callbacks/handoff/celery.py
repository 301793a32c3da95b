"""Celery hand-off: the receiver records each callback and publishes a Celery task for it.

Needs the ``celery`` extra (``pip install 'runflow-callbacks[celery]'``). Works with any store
(Redis, PostgreSQL, SQLite on one machine). The task id is the callback's idempotency key and
its only argument; the worker reads the body from the store and runs the handler through
:meth:`CallbackProcessor.run_queued <runflow_callbacks.processing.CallbackProcessor.run_queued>`,
so a task delivered twice (a duplicate delivery queues it again; a broker redelivers) runs the
handler once.

In the module your workers load (``celery -A tasks worker``)::

    from celery import Celery
    from runflow_callbacks.handoff.celery import make_task

    app = Celery("tasks", broker="redis://cache:6379/1")
    run_callback = make_task(app, store="redis://cache:6379/0", handlers=handle)

and in the receiver (``CeleryHandOff`` takes the task, or the app and the task's name)::

    receiver = CallbackReceiver(secrets=[...], store=store, hand_off=CeleryHandOff(run_callback))

The task is declared ``acks_late`` and ``reject_on_worker_lost``: a worker killed mid-handler
leaves its message to the broker, which delivers it again (Redis: after the transport's
``visibility_timeout``; prefork: at once, when the pool sees its child die); its claim on the
callback expires after ``lease`` and the redelivered task claims it again. What the task does
with each outcome of the run:

======================  ===========================================================================
``processed``           done (acknowledged)
``duplicate``, ``dead``  done: a job delivered twice, or a callback in the dead letter
``unhandled``           done: kept as ``unhandled`` until a handler takes its event
``failed``              retried (``Task.retry``, same task id) when the store says it is due again
                        (``backoff``); done once it is dead (``max_tries``)
``in_progress``         retried after ``lease``: another worker holds it now, and may die
``store_unavailable``   the store failed: retried with backoff, up to a minute apart
======================  ===========================================================================

Each worker process keeps one event loop (in a thread of its own) with one store and one
:class:`~runflow_callbacks.processing.CallbackProcessor`, opened at its first task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar

from runflow_callbacks.defaults import DEFAULT_NAMESPACE
from runflow_callbacks.errors import ConfigurationError, StoreError, UnknownCallbackError
from runflow_callbacks.handoff import HandOffError, QueueHandOff, worker_parts
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.stores import scrub

try:
    import celery
    from celery import signals
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the Celery hand-off needs Celery: pip install 'runflow-callbacks[celery]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    from typing_extensions import Unpack

    from runflow_callbacks.answers import Outcome
    from runflow_callbacks.handlers import Handler, HandlerTable
    from runflow_callbacks.options import ReceiverArgs, ReceiverOptions
    from runflow_callbacks.stores import CallbackStore

__all__ = ["DEFAULT_TASK_NAME", "CeleryHandOff", "make_task"]

logger = logging.getLogger("runflow_callbacks.handoff.celery")

#: The name :func:`make_task` gives the task, and :class:`CeleryHandOff` sends by default.
DEFAULT_TASK_NAME: Final = "runflow_callbacks.run_callback"
#: A store that fails is tried again after 1, 2, 4... seconds, at most this many apart.
MAX_STORE_RETRY_SECONDS: Final = 60.0

T = TypeVar("T")


class CeleryHandOff(QueueHandOff):
    """Publishes the task of each recorded callback (task id and only argument: its key).

    ``target`` is the task :func:`make_task` made, or the :class:`celery.Celery` app the
    workers share (then the task is sent by ``task_name``: the receiver need not import your
    handlers). ``queue`` routes the task; ``retry_policy`` is Celery's publishing retry policy
    (the app's ``task_publish_retry_policy`` when None). A publish that still fails raises
    :class:`~runflow_callbacks.handoff.HandOffError`: the delivery is answered 503
    ``queue_unavailable`` and Runflow retries.
    """

    def __init__(
        self,
        target: Any,
        *,
        task_name: str = DEFAULT_TASK_NAME,
        queue: str | None = None,
        retry_policy: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(target, celery.Celery):
            self.app: Any = target
            self.task: Any = None
            self.task_name = task_name
        elif isinstance(target, celery.Task):
            self.app, self.task, self.task_name = target.app, target, target.name
        else:
            raise ConfigurationError(
                f"CeleryHandOff takes a Celery app or task, not {type(target).__name__}"
            )
        self.queue = queue
        self.retry_policy = None if retry_policy is None else dict(retry_policy)

    def __repr__(self) -> str:
        return f"CeleryHandOff(task_name={self.task_name!r}, queue={self.queue!r})"

    async def enqueue(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._publish, key)
        except Exception as error:  # noqa: BLE001 - whatever the broker raised, the job is not queued
            broker = self.app.conf.broker_url
            text = f"{type(error).__name__}: {error}"
            if isinstance(broker, str):
                text = scrub(text, broker)
            raise HandOffError(f"Celery did not take the task: {text}") from None

    def _publish(self, key: str) -> None:
        options: dict[str, Any] = {"task_id": key}
        if self.queue is not None:
            options["queue"] = self.queue
        if self.retry_policy is not None:
            options["retry_policy"] = self.retry_policy
        if self.task is not None:
            self.task.apply_async(args=(key,), **options)
        else:
            self.app.send_task(self.task_name, args=(key,), **options)


class _WorkerRuntime:
    """One event loop, store and processor per worker process, made at its first task (and
    again in a forked child: a loop, its thread and its connections do not survive a fork)."""

    def __init__(
        self,
        make_store: Callable[[], CallbackStore],
        handlers: HandlerTable,
        options: ReceiverOptions,
    ) -> None:
        self._make_store = make_store
        self._handlers = handlers
        self.options = options
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._processor: CallbackProcessor | None = None

    def _started(self) -> tuple[asyncio.AbstractEventLoop, CallbackProcessor]:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._processor is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="runflow-callbacks-celery", daemon=True
                ).start()
                self._processor = asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                self._loop, self._pid = loop, os.getpid()
            return self._loop, self._processor

    async def _open(self) -> CallbackProcessor:
        # Made on the loop that uses it: some drivers bind their connections to a loop.
        return CallbackProcessor(self._make_store(), self._handlers, options=self.options)

    def call(self, operation: Callable[[CallbackProcessor], Coroutine[Any, Any, T]]) -> T:
        loop, processor = self._started()
        return asyncio.run_coroutine_threadsafe(operation(processor), loop).result()

    def close(self, **_: Any) -> None:
        """Close the store (at the worker's shutdown); a later task opens it again."""
        with self._lock:
            loop, processor, self._loop, self._processor = (
                self._loop,
                self._processor,
                None,
                None,
            )
            if loop is None or processor is None or self._pid != os.getpid():
                return
            try:
                asyncio.run_coroutine_threadsafe(processor.store.close(), loop).result(timeout=10)
            except Exception as error:  # noqa: BLE001 - shutting down: say so and go on
                logger.warning("could not close the store cleanly: %s", error)
            loop.call_soon_threadsafe(loop.stop)


async def _retry_delay(processor: CallbackProcessor, key: str) -> float | None:
    """Seconds until a failed callback is due again; None when it is not to be retried."""
    record = await processor.store.get(key)
    if record is None or record.state != "failed":
        return None  # dead, or taken by another run (which has its own task)
    if record.next_attempt_at is None:
        return 0.0
    wait = (record.next_attempt_at - processor.clock()).total_seconds()
    return max(wait, 0.0)


def _execute(task: Any, runtime: _WorkerRuntime, key: str) -> str:
    """The body of the task: run ``key`` once, and say what to do with the message."""
    try:
        outcome: Outcome = runtime.call(lambda processor: processor.run_queued(key))
    except UnknownCallbackError:
        logger.error(  # noqa: TRY400 - the key says enough; no traceback
            "callback %r: no such callback in the store (is this worker on the receiver's "
            "store and namespace?); the task is dropped",
            key,
        )
        return "unknown"
    except StoreError as error:
        wait = min(2.0**task.request.retries, MAX_STORE_RETRY_SECONDS)
        logger.warning("callback %r: the store failed (%s); retrying in %.0fs", key, error, wait)
        raise task.retry(countdown=wait) from None
    status = outcome.status
    if status in {"in_progress", "store_unavailable"}:
        raise task.retry(countdown=runtime.options.lease.total_seconds())
    if status == "failed":
        wait_for = runtime.call(lambda processor: _retry_delay(processor, key))
        if wait_for is not None:
            raise task.retry(countdown=wait_for)
        return "dead"
    return status


def make_task(
    app: Any,
    *,
    store: str | Callable[[], CallbackStore],
    handlers: HandlerTable | Handler | str | None,
    namespace: str = DEFAULT_NAMESPACE,
    name: str = DEFAULT_TASK_NAME,
    options: ReceiverOptions | None = None,
    **changes: Unpack[ReceiverArgs],
) -> Any:
    """Register, on the Celery ``app``, the task that runs handed-off callbacks; return it.

    ``store`` is the receiver's store URL (opened with ``namespace``), or a function that opens
    one (called once per worker process). ``handlers`` is a
    :class:`~runflow_callbacks.handlers.HandlerTable` (``receiver.handlers``), one handler for
    every event, a ``"module:function"`` string, or None (every callback kept as
    ``unhandled``). The options of :class:`~runflow_callbacks.options.ReceiverOptions`
    (``lease``, ``handler_timeout``, ``max_tries``, ``backoff``, ``clock``...) apply to the
    runs, as in :class:`~runflow_callbacks.processing.CallbackProcessor`.

    >>> app = celery.Celery("example")
    >>> task = make_task(app, store="memory://", handlers=None)
    >>> task.name, task.acks_late, task.reject_on_worker_lost
    ('runflow_callbacks.run_callback', True, True)
    """
    make_store, table, chosen = worker_parts(
        "Celery",
        store=store,
        handlers=handlers,
        namespace=namespace,
        options=options,
        changes=changes,
    )
    runtime = _WorkerRuntime(make_store, table, chosen)
    signals.worker_process_shutdown.connect(runtime.close, weak=False)
    signals.worker_shutdown.connect(runtime.close, weak=False)

    def run_callback(task: Any, key: str) -> str:
        return _execute(task, runtime, key)

    run_callback.__doc__ = "Run the handed-off Runflow callback ``key`` exactly once."
    return app.task(
        name=name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
    )(run_callback)
