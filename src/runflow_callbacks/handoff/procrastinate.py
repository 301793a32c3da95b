"""procrastinate hand-off: the job is deferred in the very transaction that records the callback.

Needs the ``procrastinate`` extra (``pip install 'runflow-callbacks[procrastinate]'``) and the
PostgreSQL store, on the database that holds procrastinate's schema: the record statement and
procrastinate's defer run on one connection in one transaction
(:meth:`PostgresStore.record_with <runflow_callbacks.stores.postgres.PostgresStore.record_with>`),
so a callback is recorded *and* queued, or neither (then the answer is 503 and Runflow
retries). In the module your workers load::

    import procrastinate
    from runflow_callbacks.handoff.procrastinate import make_task

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL))
    run_callback = make_task(app, store=DATABASE_URL, handlers=handle)

and in the receiver::

    receiver = CallbackReceiver(
        secrets=[...], store=open_store(DATABASE_URL), hand_off=ProcrastinateHandOff(run_callback)
    )

The job's only argument is the idempotency key; the worker reads the body from the store and
runs the handler through
:meth:`CallbackProcessor.run_queued <runflow_callbacks.processing.CallbackProcessor.run_queued>`
(claim with a lease, renewal, fencing, complete or fail), so a job run twice runs the handler
once. A failed handler's job is retried by procrastinate when the store says it is due again
(``backoff``; done once it is dead after ``max_tries``); a job that finds the callback held by
another worker is retried once that lease would expire; a store that fails, with backoff.

A worker killed mid-job leaves its job in procrastinate's ``doing`` state: run
:func:`retry_stalled_jobs` periodically (a procrastinate periodic task, or cron) to put the
jobs of workers whose heartbeat stopped back in the queue; the callback's lease has expired by
then, and the job claims it again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.defaults import DEFAULT_NAMESPACE
from runflow_callbacks.errors import ConfigurationError, StoreError, UnknownCallbackError
from runflow_callbacks.handoff import QUEUED_STATES, HandOffError, worker_parts
from runflow_callbacks.processing import CallbackProcessor

try:
    import procrastinate
    from procrastinate import exceptions as procrastinate_errors
    from procrastinate.retry import BaseRetryStrategy, RetryDecision
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the procrastinate hand-off needs procrastinate: "
        "pip install 'runflow-callbacks[procrastinate]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from procrastinate.jobs import Job, JobDeferrer
    from procrastinate.tasks import Task
    from typing_extensions import Unpack

    from runflow_callbacks.handlers import Handler, HandlerTable
    from runflow_callbacks.options import ReceiverArgs, ReceiverOptions
    from runflow_callbacks.stores import Admission, CallbackStore, IncomingCallback

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_TASK_NAME",
    "ProcrastinateHandOff",
    "close_store",
    "make_task",
    "retry_stalled_jobs",
]

logger = logging.getLogger("runflow_callbacks.handoff.procrastinate")

#: The name :func:`make_task` gives the task, and :class:`ProcrastinateHandOff` defers by default.
DEFAULT_TASK_NAME: Final = "runflow_callbacks.run_callback"
#: The queue the task's jobs go to unless told otherwise.
DEFAULT_QUEUE: Final = "runflow_callbacks"
#: A store that fails is tried again after 2, 4, 8... seconds, at most this many apart.
MAX_STORE_RETRY_SECONDS: Final = 60


class ProcrastinateHandOff:
    """Defers the job of each recorded callback in the transaction that records it.

    ``target`` is the task :func:`make_task` made, or the :class:`procrastinate.App` (then the
    job is deferred by ``task_name``, to ``queue`` or :data:`DEFAULT_QUEUE`: the receiver need
    not import your handlers). ``queue`` and ``priority`` override the task's. The store must
    be the PostgreSQL store (:class:`~runflow_callbacks.stores.postgres.PostgresStore`), on
    procrastinate's database.
    """

    def __init__(
        self,
        target: Task[Any, Any, Any] | procrastinate.App,
        *,
        task_name: str = DEFAULT_TASK_NAME,
        queue: str | None = None,
        priority: int | None = None,
    ) -> None:
        self.target = target
        self.task_name = task_name if isinstance(target, procrastinate.App) else target.name
        self.queue = queue
        self.priority = priority

    def __repr__(self) -> str:
        return f"ProcrastinateHandOff(task_name={self.task_name!r}, queue={self.queue!r})"

    def _deferrer(self, connection: object) -> JobDeferrer:
        options: dict[str, Any] = {"connection": connection}
        if self.queue is not None:
            options["queue"] = self.queue
        if self.priority is not None:
            options["priority"] = self.priority
        if isinstance(self.target, procrastinate.App):
            # By name, the app may not know the task: its queue is make_task's default then.
            options.setdefault("queue", DEFAULT_QUEUE)
            return self.target.configure_task(self.task_name, **options)
        return self.target.configure(**options)

    async def admit(
        self, store: CallbackStore, incoming: IncomingCallback, *, now: datetime
    ) -> Admission:
        record_with = getattr(store, "record_with", None)
        if record_with is None:
            raise ConfigurationError(
                "the procrastinate hand-off needs the PostgreSQL store (postgresql://...), "
                f"not {store!r}"
            )
        key = incoming.key

        async def defer(connection: object, admission: Admission) -> None:
            if admission.state not in QUEUED_STATES:
                return  # processed or dead: nothing to queue
            try:
                await self._deferrer(connection).defer_async(key=key)
            except procrastinate_errors.ProcrastinateException as error:
                raise HandOffError(
                    f"procrastinate did not take the job: {type(error).__name__}: {error}"
                ) from None

        admission: Admission = await record_with(incoming, now=now, in_transaction=defer)
        return admission


class _RunAgain(Exception):  # noqa: N818 - control flow for the retry strategy, not an error
    """The callback is not done yet: run its job again at ``at``."""

    def __init__(self, key: str, at: datetime) -> None:
        super().__init__(f"callback {key!r} runs again at {at.isoformat()}")
        self.at = at


class _Strategy(BaseRetryStrategy):
    """Retry a job when its callback is due again, or when the store failed; never else."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, _RunAgain):
            return RetryDecision(retry_at=exception.at)
        if isinstance(exception, StoreError):
            wait = min(2 ** (job.attempts + 1), MAX_STORE_RETRY_SECONDS)
            return RetryDecision(retry_in={"seconds": wait})
        return None


class _Runtime:
    """One store and processor per event loop (a procrastinate worker runs in one)."""

    def __init__(
        self,
        make_store: Callable[[], CallbackStore],
        handlers: HandlerTable,
        options: ReceiverOptions,
    ) -> None:
        self._make_store = make_store
        self._handlers = handlers
        self.options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._processor: CallbackProcessor | None = None

    def processor(self) -> CallbackProcessor:
        loop = asyncio.get_running_loop()
        if self._processor is None or self._loop is not loop:
            self._processor = CallbackProcessor(
                self._make_store(), self._handlers, options=self.options
            )
            self._loop = loop
        return self._processor

    async def close(self) -> None:
        processor, self._processor, self._loop = self._processor, None, None
        if processor is not None:
            await processor.store.close()


# The runtime of each task make_task made, for close_store().
_RUNTIMES: dict[int, _Runtime] = {}


async def _run(runtime: _Runtime, key: str) -> str:
    """The body of the job: run ``key`` once; raise :class:`_RunAgain` when it is not done."""
    processor = runtime.processor()
    try:
        outcome = await processor.run_queued(key)
    except UnknownCallbackError:
        logger.error(  # noqa: TRY400 - the key says enough; no traceback
            "callback %r: no such callback in the store (is this worker on the receiver's "
            "store and namespace?); the job is dropped",
            key,
        )
        return "unknown"
    status = outcome.status
    if status in {"in_progress", "store_unavailable"}:
        raise _RunAgain(key, processor.clock() + runtime.options.lease)
    if status == "failed":
        record = await processor.store.get(key)
        if record is not None and record.state == "failed":
            raise _RunAgain(key, record.next_attempt_at or processor.clock())
        return "dead" if record is not None and record.state == "dead" else status
    return status


def make_task(
    app: procrastinate.App,
    *,
    store: str | Callable[[], CallbackStore],
    handlers: HandlerTable | Handler | str | None,
    namespace: str = DEFAULT_NAMESPACE,
    name: str = DEFAULT_TASK_NAME,
    queue: str = DEFAULT_QUEUE,
    options: ReceiverOptions | None = None,
    **changes: Unpack[ReceiverArgs],
) -> Task[Any, Any, Any]:
    """Register, on the procrastinate ``app``, the task that runs handed-off callbacks.

    ``store`` is the receiver's PostgreSQL store URL (opened with ``namespace``), or a function
    that opens one. ``handlers`` is a :class:`~runflow_callbacks.handlers.HandlerTable`
    (``receiver.handlers``), one handler for every event, a ``"module:function"`` string, or
    None. The options of :class:`~runflow_callbacks.options.ReceiverOptions` (``lease``,
    ``handler_timeout``, ``max_tries``, ``backoff``, ``clock``...) apply to the runs.
    """
    make_store, table, chosen = worker_parts(
        "procrastinate",
        store=store,
        handlers=handlers,
        namespace=namespace,
        options=options,
        changes=changes,
    )
    runtime = _Runtime(make_store, table, chosen)

    async def run_callback(key: str) -> str:
        """Run the handed-off Runflow callback ``key`` exactly once."""
        return await _run(runtime, key)

    task = app.task(name=name, queue=queue, retry=_Strategy())(run_callback)
    _RUNTIMES[id(task)] = runtime
    return task


async def close_store(task: Task[Any, Any, Any]) -> None:
    """Close the store the runs of ``task`` (made by :func:`make_task`) opened, when the
    worker stops; a later run opens it again."""
    runtime = _RUNTIMES.get(id(task))
    if runtime is not None:
        await runtime.close()


async def retry_stalled_jobs(
    app: procrastinate.App,
    *,
    seconds_since_heartbeat: float = 30,
    task_name: str = DEFAULT_TASK_NAME,
) -> int:
    """Put back in the queue the jobs of workers that stopped sending heartbeats (killed);
    the number of jobs. Run it periodically; the app must be open."""
    stalled = list(
        await app.job_manager.get_stalled_jobs(
            task_name=task_name, seconds_since_heartbeat=seconds_since_heartbeat
        )
    )
    for job in stalled:
        await app.job_manager.retry_job(job)
    if stalled:
        logger.warning("put %d stalled job(s) back in the queue", len(stalled))
    return len(stalled)
