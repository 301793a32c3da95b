"""The exactly-once engine: sync and inbox modes, leases, retries, dead letter, reconciliation."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from runflow_callbacks.answers import Outcome
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.models import BatchCallbackPayload, GenericCallbackPayload, parse_callback
from runflow_callbacks.processing import CallbackProcessor, ExponentialBackoff
from runflow_callbacks.stores import CallbackStore, open_store
from runflow_callbacks.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import StoredCallback

T0 = datetime(2026, 5, 6, 10, 0, tzinfo=timezone.utc)
BATCH = "0190f2a4-0000-7000-8000-0000000000{:02}"
FIXED = ExponentialBackoff(base=timedelta(seconds=10), factor=2, cap=timedelta(minutes=5))


def body_for(index: int = 1, event: str = "batch.succeeded") -> bytes:
    return (
        f'{{"event": "{event}", "batch_id": "{BATCH.format(index)}", "status": "succeeded"}}'
    ).encode()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Recorder:
    """A handler that counts its runs and fails on demand."""

    def __init__(self) -> None:
        self.calls: list[CallbackContext] = []
        self.failures = 0  # how many next calls raise
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, context: CallbackContext) -> None:
        self.calls.append(context)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("downstream unavailable")

    @property
    def keys(self) -> list[str]:
        return [context.key or "" for context in self.calls]


@pytest.fixture
async def store() -> AsyncIterator[CallbackStore]:
    async with MemoryStore() as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    store: CallbackStore, handler: Recorder, clock: Clock, **options: object
) -> CallbackProcessor:
    return CallbackProcessor(store, handler, clock=clock, backoff=FIXED, **options)  # type: ignore[arg-type] # options are forwarded as given


def delivery(processor: CallbackProcessor, index: int = 1) -> CallbackContext:
    body = body_for(index)
    return processor.incoming(
        parse_callback(body), body, headers={"Runflow-Request-Id": f"r{index}"}
    )


async def stored(store: CallbackStore, outcome: Outcome) -> StoredCallback:
    """The record an outcome's callback has in the store now."""
    assert outcome.key is not None
    record = await store.get(outcome.key)
    assert record is not None
    return record


# --- sync mode -----------------------------------------------------------------------------


async def test_sync_processes_once_and_answers_duplicates(
    store: CallbackStore, clock: Clock
) -> None:
    handler = Recorder()
    processor = make(store, handler, clock)
    first = await processor.handle(delivery(processor))
    assert (first.status, first.http_status, first.ok) == ("processed", 200, True)
    assert (await stored(store, first)).state == "processed"
    second = await processor.handle(delivery(processor))
    assert (second.status, second.http_status) == ("duplicate", 200)
    assert len(handler.calls) == 1
    context = handler.calls[0]
    assert isinstance(context.payload, BatchCallbackPayload)
    assert (context.attempt, context.event, context.body) == (1, "batch.succeeded", body_for(1))
    assert context.key == f"batch:{BATCH.format(1)}:batch.succeeded"
    assert (context.source, context.headers["Runflow-Request-Id"]) == ("http", "r1")
    stats = await store.stats()
    assert (stats.received, stats.duplicates, stats.processed) == (1, 1, 1)


async def test_sync_concurrent_duplicate_is_not_acknowledged_early(
    store: CallbackStore, clock: Clock
) -> None:
    handler = Recorder()
    handler.gate = asyncio.Event()
    handler.failures = 1
    processor = make(store, handler, clock)
    first = asyncio.create_task(processor.handle(delivery(processor)))
    await asyncio.wait_for(handler.started.wait(), 10)
    concurrent = await processor.handle(delivery(processor))
    assert (concurrent.status, concurrent.http_status) == ("in_progress", 409)
    handler.gate.set()
    failed = await asyncio.wait_for(first, 10)
    assert (failed.status, failed.http_status) == ("failed", 500)
    assert isinstance(failed.error, RuntimeError)
    assert (await stored(store, failed)).last_error == "RuntimeError: downstream unavailable"
    # Runflow retries (it got 409 and 500): the handler runs again and succeeds.
    retried = await processor.handle(delivery(processor))
    assert retried.status == "processed"
    assert len(handler.calls) == 2
    assert handler.calls[1].attempt == 2


async def test_sync_plain_function_handler_runs_in_a_thread(
    store: CallbackStore, clock: Clock
) -> None:
    threads: list[str] = []

    def handler(context: CallbackContext) -> None:
        threads.append(threading.current_thread().name)

    processor = CallbackProcessor(store, handler, clock=clock)
    outcome = await processor.handle(delivery(processor))
    assert outcome.status == "processed"
    assert threads
    assert threads[0] != threading.current_thread().name


async def test_sync_dead_after_max_tries(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    handler.failures = 10
    processor = make(store, handler, clock, max_tries=2)
    assert (await processor.handle(delivery(processor))).status == "failed"
    last = await processor.handle(delivery(processor))
    assert (last.status, last.http_status) == ("failed", 500)
    assert (await stored(store, last)).state == "dead"
    after = await processor.handle(delivery(processor))
    assert (after.status, after.http_status) == ("dead", 200)
    assert len(handler.calls) == 2
    handler.failures = 0
    assert after.key is not None
    retried = await processor.retry(after.key)
    assert retried.status == "processed"
    assert handler.calls[-1].attempt == 1  # retry starts the count again
    assert handler.calls[-1].source == "retry"


async def test_crashed_replica_lease_expires(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    processor = make(store, handler, clock, lease=timedelta(minutes=1))
    incoming = delivery(processor)
    hanging = Recorder()
    hanging.gate = asyncio.Event()  # never set
    crashed = CallbackProcessor(store, hanging, clock=clock, lease=timedelta(minutes=1))
    crashed_run = asyncio.create_task(crashed.handle(incoming))
    await asyncio.wait_for(hanging.started.wait(), 10)  # the other replica claimed it...
    crashed_run.cancel()  # ...and dies mid-handler, leaving its lease behind
    key = processor.key_of(incoming)
    holder = await store.get(key)
    assert holder is not None
    assert holder.state == "processing"
    assert (await processor.handle(incoming)).status == "in_progress"
    clock.advance(timedelta(minutes=1))
    outcome = await processor.handle(incoming)
    assert outcome.status == "processed"
    assert handler.calls[0].attempt == 2


async def test_handler_past_its_timeout_is_cancelled(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    handler.gate = asyncio.Event()  # never set: the handler hangs
    processor = make(store, handler, clock, handler_timeout=timedelta(milliseconds=50))
    outcome = await asyncio.wait_for(processor.handle(delivery(processor)), 30)
    assert outcome.status == "failed"
    assert isinstance(outcome.error, TimeoutError | asyncio.TimeoutError)


async def test_a_slow_handler_keeps_its_lease(store: CallbackStore) -> None:
    """The lease is renewed while the handler runs, so a duplicate arriving after the
    original lease would have expired still waits (409) and the handler runs once."""
    handler = Recorder()
    handler.gate = asyncio.Event()
    lease = timedelta(seconds=1)
    processor = CallbackProcessor(store, handler, lease=lease)
    first = asyncio.create_task(processor.handle(delivery(processor)))
    await asyncio.wait_for(handler.started.wait(), 10)
    claimed = await store.get(handler.keys[0])
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    deadline = claimed.lease_expires_at + lease
    await asyncio.sleep(max((deadline - datetime.now(timezone.utc)).total_seconds(), 0.0))
    duplicate = await asyncio.wait_for(processor.handle(delivery(processor)), 10)
    assert duplicate.status == "in_progress"
    handler.gate.set()
    assert (await asyncio.wait_for(first, 10)).status == "processed"
    assert len(handler.calls) == 1


async def test_unparsable_stored_body_goes_dead(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    processor = make(store, handler, clock, mode="inbox")
    # Bytes that parsed when they arrived, but not with the models of a later version.
    broken = processor.incoming(GenericCallbackPayload.model_validate({}), b"[not json")
    await processor.handle(broken)
    [outcome] = await processor.run_due()
    assert outcome.status == "failed"
    assert (await stored(store, outcome)).state == "dead"
    assert handler.calls == []


# --- inbox mode ----------------------------------------------------------------------------


async def test_inbox_records_then_worker_retries_with_backoff(
    store: CallbackStore, clock: Clock
) -> None:
    handler = Recorder()
    handler.failures = 2
    processor = make(store, handler, clock, mode="inbox", max_tries=3)
    recorded = await processor.handle(delivery(processor))
    assert (recorded.status, recorded.http_status) == ("recorded", 200)
    assert handler.calls == []
    [first] = await processor.run_due()
    assert first.status == "failed"
    assert (await stored(store, first)).next_attempt_at == T0 + timedelta(seconds=10)
    assert await processor.run_due() == []  # not due yet
    clock.advance(timedelta(seconds=10))
    [second] = await processor.run_due()
    assert (await stored(store, second)).next_attempt_at == clock() + timedelta(seconds=20)
    # A redelivery meanwhile is answered 200 (it is recorded) and does not run the handler.
    assert (await processor.handle(delivery(processor))).status == "recorded"
    assert len(handler.calls) == 2
    clock.advance(timedelta(seconds=20))
    [third] = await processor.run_due()
    assert third.status == "processed"
    assert [context.attempt for context in handler.calls] == [1, 2, 3]
    assert (await processor.handle(delivery(processor))).status == "duplicate"


async def test_inbox_dead_letter_and_retry(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    handler.failures = 5
    processor = make(store, handler, clock, mode="inbox", max_tries=2)
    key = (await processor.handle(delivery(processor))).key
    assert key is not None
    await processor.run_due()
    clock.advance(timedelta(minutes=10))
    [last] = await processor.run_due()
    assert (await stored(store, last)).state == "dead"
    clock.advance(timedelta(days=1))
    assert await processor.run_due() == []  # the dead letter is not retried by itself
    assert (await processor.handle(delivery(processor))).status == "dead"
    assert (await store.stats()).dead == 1
    handler.failures = 0
    assert (await processor.retry(key)).status == "processed"
    assert (await processor.retry(key)).status == "duplicate"


async def test_worker_runs_until_stopped(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    processor = make(store, handler, clock, mode="inbox")
    stop = asyncio.Event()
    worker = asyncio.create_task(processor.run_worker(stop=stop, poll_interval=timedelta(hours=1)))
    await processor.handle(delivery(processor, 1))
    await asyncio.wait_for(handler.started.wait(), 10)  # woken at once, not after the poll
    stop.set()
    await asyncio.wait_for(worker, 10)
    record = await store.get(handler.keys[0])
    assert record is not None
    assert record.state == "processed"


async def test_reconciled_payloads(store: CallbackStore, clock: Clock) -> None:
    handler = Recorder()
    processor = make(store, handler, clock, mode="inbox")
    await processor.handle(delivery(processor, 1))
    await processor.run_due()
    body = body_for(1)
    again = processor.incoming(parse_callback(body), body, source="reconcile")
    assert (await processor.process_reconciled(again)).status == "duplicate"
    body = body_for(2)
    missed = processor.incoming(parse_callback(body), body, source="reconcile")
    outcome = await processor.process_reconciled(missed)
    assert outcome.status == "processed"
    record = await stored(store, outcome)
    assert (record.source, record.deliveries) == ("reconcile", 0)
    assert handler.calls[-1].source == "reconcile"
    assert len(handler.calls) == 2
    stats = await store.stats()
    assert (stats.received, stats.reconciled, stats.duplicates) == (2, 1, 0)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL two replicas can share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_exactly_once_across_two_replicas_with_failures(
    shared_url: str, namespace: str
) -> None:
    """Two processors on separate connections to one store; every callback delivered four
    times concurrently; a third of the first tries fail. Each runs successfully once."""
    url = shared_url
    effects: list[str] = []
    failed_once: set[str] = set()

    async def handler(context: CallbackContext) -> None:
        await asyncio.sleep(0)
        key = context.key or ""
        if key not in failed_once and hash(key) % 3 == 0:
            failed_once.add(key)
            raise RuntimeError("flaky")
        effects.append(key)

    async with (
        open_store(url, namespace=namespace) as first,
        open_store(url, namespace=namespace) as second,
    ):
        replicas = [CallbackProcessor(s, handler, max_tries=None) for s in (first, second)]

        async def deliver(index: int) -> None:
            # Runflow's side: retry until a 2xx, bounded.
            for _ in range(50):
                outcomes = await asyncio.gather(
                    *(replica.handle(delivery(replica, index)) for replica in replicas * 2)
                )
                if any(o.ok for o in outcomes):
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"callback {index} never acknowledged: {outcomes}")

        await asyncio.gather(*(deliver(index) for index in range(40)))
        stats = await first.stats()
    assert sorted(effects) == sorted(set(effects))  # nothing ran twice
    assert len(effects) == 40
    assert (stats.received, stats.processed) == (40, 40)


# --- options -------------------------------------------------------------------------------


def test_outcome_answers() -> None:
    answers = {
        status: Outcome(status, "k").http_status
        for status in ("processed", "duplicate", "recorded", "dead", "in_progress", "failed")
    }
    assert answers == {
        "processed": 200,
        "duplicate": 200,
        "recorded": 200,
        "dead": 200,
        "in_progress": 409,
        "failed": 500,
    }
    assert Outcome("processed", "k").detail is None
    assert "retry" in (Outcome("in_progress", "k").detail or "")


def test_exponential_backoff() -> None:
    backoff = ExponentialBackoff(base=timedelta(seconds=1), factor=3, cap=timedelta(seconds=20))
    assert [backoff(n).total_seconds() for n in (0, 1, 2, 3, 4, 100_000)] == [1, 1, 3, 9, 20, 20]
    jittered = ExponentialBackoff(base=timedelta(seconds=10), jitter=0.5, random=lambda: 1.0)
    assert jittered(1) == timedelta(seconds=5)
    with pytest.raises(ConfigurationError):
        ExponentialBackoff(base=timedelta(0))
    with pytest.raises(ConfigurationError):
        ExponentialBackoff(jitter=2)


def test_bad_options(store: CallbackStore) -> None:
    handler = Recorder()
    with pytest.raises(ConfigurationError, match="mode"):
        CallbackProcessor(store, handler, mode="later")  # type: ignore[arg-type] # the bad input
    with pytest.raises(ConfigurationError, match="lease"):
        CallbackProcessor(store, handler, lease=timedelta(0))
    with pytest.raises(ConfigurationError, match="handler_timeout"):
        CallbackProcessor(store, handler, handler_timeout=timedelta(0))
    with pytest.raises(ConfigurationError, match="max_tries"):
        CallbackProcessor(store, handler, max_tries=0)
    with pytest.raises(ConfigurationError, match="handler"):
        CallbackProcessor(store, "not callable")  # type: ignore[arg-type] # the bad input
    with pytest.raises(ConfigurationError, match="unknown receiver option"):
        CallbackProcessor(store, handler, lease_seconds=3)  # type: ignore[call-arg] # the bad input


async def test_naive_clock_is_refused(store: CallbackStore) -> None:
    processor = CallbackProcessor(
        store,
        Recorder(),
        clock=lambda: datetime(2026, 1, 1),
    )
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await processor.handle(delivery(processor))


class _CompleteFails:
    """A store whose ``complete`` fails ``times`` times, as a store restarting would."""

    def __init__(self, inner: CallbackStore, times: int) -> None:
        self.inner = inner
        self.times = times

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        if self.times:
            self.times -= 1
            from runflow_callbacks.errors import StoreError

            raise StoreError("connection refused")
        return await self.inner.complete(key, token, now=now)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_completion_the_store_missed_is_stored_later_and_never_runs_the_handler_again(
    store: CallbackStore,
) -> None:
    handler = Recorder()
    flaky = _CompleteFails(store, times=2)
    processor = CallbackProcessor(flaky, handler)  # type: ignore[arg-type] # a wrapper
    first = await processor.handle(delivery(processor))
    assert (first.status, first.http_status) == ("store_unavailable", 503)
    for _ in range(200):  # the background write retries with backoff from 50 ms
        record = await stored(store, first)
        if record.state == "processed":
            break
        await asyncio.sleep(0.02)
    assert record.state == "processed"
    again = await processor.handle(delivery(processor))
    assert again.status == "duplicate"
    assert len(handler.calls) == 1


async def test_a_redelivery_stores_the_missed_completion_at_once_instead_of_409(
    store: CallbackStore,
) -> None:
    handler = Recorder()
    flaky = _CompleteFails(store, times=1)
    processor = CallbackProcessor(flaky, handler)  # type: ignore[arg-type] # a wrapper
    first = await processor.handle(delivery(processor))
    assert first.status == "store_unavailable"
    again = await processor.handle(delivery(processor))  # before the background retry
    assert (again.status, again.http_status) == ("duplicate", 200)
    assert (await stored(store, again)).state == "processed"
    assert len(handler.calls) == 1
