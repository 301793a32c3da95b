"""Batched writes on PostgreSQL and Redis (``stores/_batch.py``): the operations in flight
together share one round trip, and still answer, change and fail exactly as each would alone.

Batches form deterministically here: the first operation of an ``asyncio.gather`` finds the
store idle and lets the event loop run once, and the others, started in the same iteration,
are all queued behind it by then. Nothing here measures time.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks.errors import StoreError
from runflow_callbacks.stores import (
    Admission,
    IncomingCallback,
    UnknownCallbackError,
    open_store,
)
from runflow_callbacks.stores._batch import Batcher, Pending
from runflow_callbacks.stores.memory import MemoryStore
from servers import ServerUnavailable, postgres_cluster, unavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from runflow_callbacks.stores import CallbackStore, Source
    from servers import PostgresCluster

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


def incoming(key: str, *, at: datetime = T0, source: Source = "delivery") -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event="batch.succeeded",
        body=b'{"event": "batch.succeeded", "pad": "' + b"x" * 900 + b'"}',
        headers={"Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=at,
        source=source,
    )


# --- the batcher alone ------------------------------------------------------------------------


class _Recorder:
    """A ``run`` for a :class:`Batcher` that answers each op with itself (or fails the ones
    named in ``failing``), and remembers every batch."""

    def __init__(self, *, failing: frozenset[int] = frozenset(), raises: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.failing, self.raises = failing, raises
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, batch: list[Pending[int]]) -> None:
        self.batches.append([pending.op for pending in batch])
        self.started.set()
        await asyncio.sleep(0)  # a round trip: the batch stays in flight for a while
        if self.gate is not None:
            await self.gate.wait()
        if self.raises:
            raise RuntimeError("run failed")
        for pending in batch:
            if pending.op in self.failing:
                pending.fail(ValueError(pending.op))
            else:
                pending.resolve(pending.op)


async def test_calls_in_flight_together_share_one_batch_in_order() -> None:
    run = _Recorder()
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=4)
    assert await asyncio.gather(*(batcher.call(i) for i in range(10))) == list(range(10))
    assert run.batches == [list(range(10))]
    assert await batcher.call(99) == 99  # a lone call is a batch of one
    assert run.batches[-1] == [99]


async def test_a_full_batch_is_split_and_the_rest_leave_on_their_own_sender() -> None:
    run = _Recorder()
    batcher: Batcher[int] = Batcher(run, max_batch=4, max_in_flight=8)
    assert await asyncio.gather(*(batcher.call(i) for i in range(10))) == list(range(10))
    assert run.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_calls_queued_while_every_sender_is_busy_leave_together() -> None:
    run = _Recorder()
    run.gate = asyncio.Event()
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=1)
    first = asyncio.ensure_future(batcher.call(0))
    await run.started.wait()  # the only sender holds the first batch
    later = [asyncio.ensure_future(batcher.call(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert run.batches == [[0]]
    run.gate.set()
    assert await asyncio.gather(first, *later) == list(range(6))
    assert run.batches == [[0], [1, 2, 3, 4, 5]]


async def test_one_failing_call_fails_alone_and_a_failing_batch_fails_only_itself() -> None:
    run = _Recorder(failing=frozenset({2}))
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=4)
    answers = await asyncio.gather(*(batcher.call(i) for i in range(4)), return_exceptions=True)
    assert answers[:2] == [0, 1]
    assert isinstance(answers[2], ValueError)
    assert answers[3] == 3
    run.raises = True
    with pytest.raises(RuntimeError, match="run failed"):
        await batcher.call(7)
    run.raises = False
    assert await batcher.call(8) == 8  # the sender survived


async def test_a_call_cancelled_while_queued_is_not_sent() -> None:
    run = _Recorder()
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=4)
    tasks = [asyncio.ensure_future(batcher.call(i)) for i in range(4)]
    await asyncio.sleep(0)  # all four queued; the batch has not left
    tasks[2].cancel()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert answers[:2] == [0, 1]
    assert isinstance(answers[2], asyncio.CancelledError)
    assert answers[3] == 3
    assert run.batches == [[0, 1, 3]]


async def test_a_cancelled_first_call_leaves_the_others_to_a_sender() -> None:
    run = _Recorder()
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=4)
    tasks = [asyncio.ensure_future(batcher.call(i)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[0].cancel()  # the one that was to send the batch
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [1, 2]
    assert run.batches == [[1, 2]]


async def test_drain_waits_for_what_is_in_flight_and_queued() -> None:
    run = _Recorder()
    run.gate = asyncio.Event()
    batcher: Batcher[int] = Batcher(run, max_batch=64, max_in_flight=1)
    tasks = [asyncio.ensure_future(batcher.call(i)) for i in range(3)]
    await run.started.wait()
    drained = asyncio.ensure_future(batcher.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    run.gate.set()
    await drained
    assert run.batches == [[0, 1, 2]]
    assert [future.result() for future in tasks] == [0, 1, 2]


def test_redis_reads_each_calls_answer_out_of_a_transaction() -> None:
    from redis.exceptions import ExecAbortError, RedisError, ResponseError

    from runflow_callbacks.stores.redis import _DISCARDED, _transaction_answers

    refused, script_error = ResponseError("ERR refused"), ResponseError("ERR in a script")
    aborted = ExecAbortError("EXECABORT Transaction discarded because of previous errors.")
    # EXEC ran every call: its answers, an error among them, in order.
    assert _transaction_answers([b"OK", b"QUEUED", b"QUEUED", [1, script_error]]) == [
        1,
        script_error,
    ]
    # A call refused when queued: nothing ran; it fails, the other is sent again.
    assert _transaction_answers([b"OK", refused, b"QUEUED", aborted]) == [refused, _DISCARDED]
    # MULTI refused: each call was answered on its own, and EXEC's error belongs to no call.
    assert _transaction_answers([refused, [0], refused, ResponseError("ERR no MULTI")]) == [
        [0],
        refused,
    ]
    # EXEC refused for the whole transaction: every call gets its error.
    assert _transaction_answers([b"OK", b"QUEUED", b"QUEUED", aborted]) == [aborted, aborted]
    with pytest.raises(RedisError, match="unexpected answer to EXEC"):
        _transaction_answers([b"OK", b"QUEUED", None])


# --- the stores ------------------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


def _batch_sizes(store: CallbackStore) -> list[int]:
    """The size of every batch ``store`` sends from now on."""
    sizes: list[int] = []
    batcher = store._batcher  # type: ignore[attr-defined]
    run = batcher._run

    async def counted(batch: list[Any]) -> None:
        sizes.append(len(batch))
        await run(batch)

    batcher._run = counted
    return sizes


async def _answers(calls: list[Callable[[], Awaitable[object]]]) -> list[object]:
    """Every call's answer, or the type of what it raised."""
    done = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
    return [type(answer) if isinstance(answer, BaseException) else answer for answer in done]


async def _scenario(store: CallbackStore, *, batched: bool) -> list[object]:
    """The same writes, in flight together (``batched``) or one at a time, on keys that are
    all different within each step, so that their order within a batch cannot matter."""

    async def step(calls: list[Callable[[], Awaitable[object]]]) -> list[object]:
        if batched:
            return await _answers(calls)
        return [answer for call in calls for answer in await _answers([call])]

    # Some keys exist beforehand, in several states.
    await store.record(incoming("old-received"))
    await store.record(incoming("old-reconciled", source="reconcile"))
    held = await store.record_and_claim(incoming("old-held"), now=T0, lease=LEASE)
    done = await store.record_and_claim(incoming("old-done"), now=T0, lease=LEASE)
    assert done.token
    assert await store.complete("old-done", done.token, now=T0)
    later = T0 + timedelta(seconds=1)
    seen: list[object] = []
    admitted = await step(
        [
            *(
                lambda key=key: store.record_and_claim(incoming(key, at=T0), now=later, lease=LEASE)
                for key in ("new-1", "new-2", "old-received", "old-held", "old-done")
            ),
            lambda: store.record_and_claim(incoming("new-3"), now=later, lease=None),
            lambda: store.record_and_claim(
                incoming("new-4", source="reconcile"), now=later, lease=LEASE
            ),
            lambda: store.record_and_claim(
                incoming("old-reconciled"), now=later, lease=timedelta(seconds=5)
            ),
        ]
    )
    admitted_keys = ("new-1", "new-2", "old-received", "old-held", "old-done", "new-3", "new-4")
    tokens = {
        key: answer.token
        for key, answer in zip((*admitted_keys, "old-reconciled"), admitted, strict=True)
        if isinstance(answer, Admission)
    }
    seen += [
        (a.inserted, a.state, a.attempts, a.acquired) if isinstance(a, Admission) else a
        for a in admitted
    ]
    assert held.token
    finish_at = later + timedelta(seconds=2)
    seen += await step(
        [
            lambda: store.complete("new-1", tokens["new-1"] or "", now=finish_at),
            lambda: store.complete("old-held", held.token or "", now=finish_at),  # still held
            lambda: store.complete("new-3", "not-a-token", now=finish_at),
            lambda: store.complete("missing", "not-a-token", now=finish_at),
            lambda: store.fail(
                "new-2", tokens["new-2"] or "", now=finish_at, error="E", retry_at=None
            ),
            lambda: store.fail(
                "old-received",
                tokens["old-received"] or "",
                now=finish_at,
                error="E",
                retry_at=None,
                dead=True,
            ),
            lambda: store.release("new-4", tokens["new-4"] or "", now=finish_at),
            lambda: store.release("missing-too", "x", now=finish_at),
            lambda: store.renew("old-reconciled", "stale", now=finish_at, lease=LEASE),
            lambda: store.renew("nowhere", "x", now=finish_at, lease=LEASE),
        ]
    )
    records = await store.list_callbacks()
    seen += [
        (r.key, r.state, r.attempts, r.deliveries, r.last_error, r.updated_at, r.source)
        for r in records
    ]
    seen.append(await store.stats())
    return seen


async def test_writes_in_flight_together_answer_and_change_what_each_would_alone(
    url: str, namespace: str
) -> None:
    async with MemoryStore() as model:
        expected = await _scenario(model, batched=False)
    async with open_store(url, namespace=namespace) as store:
        sizes = _batch_sizes(store)
        actual = await _scenario(store, batched=True)
    assert actual == expected
    assert 8 in sizes  # the admissions shared one batch
    assert 10 in sizes  # and so did the completions, failures, releases and renewals


async def test_concurrent_duplicates_in_one_batch_are_recorded_once_and_claimed_once(
    url: str, namespace: str
) -> None:
    async with open_store(url, namespace=namespace) as store:
        sizes = _batch_sizes(store)
        admissions = await asyncio.gather(
            *(store.record_and_claim(incoming("k"), now=T0, lease=LEASE) for _ in range(6))
        )
        assert sizes == [6]
        assert [a.inserted for a in admissions] == [True] + [False] * 5
        assert [a.acquired for a in admissions] == [True] + [False] * 5
        record = await store.get("k")
    assert record is not None
    assert (record.deliveries, record.attempts, record.state) == (6, 1, "processing")


async def test_a_full_batch_is_split(url: str, namespace: str) -> None:
    async with open_store(url, namespace=namespace) as store:
        store._batcher.max_batch = 4  # type: ignore[attr-defined]
        sizes = _batch_sizes(store)
        await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(10))
        )
        assert sorted(sizes) == [2, 4, 4]
        assert (await store.stats()).processing == 10


async def _poison(url: str, namespace: str, key: str) -> None:
    """Make every write of ``key`` fail on the server (a trigger; a key of the wrong type)."""
    if url.startswith("redis"):
        import redis.asyncio as redis_asyncio

        raw = redis_asyncio.Redis.from_url(url)
        try:
            await raw.set(f"{namespace}:cb:{key}", "not a hash")
        finally:
            await raw.aclose()
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(
            f"CREATE FUNCTION {namespace}_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF NEW.key = '{key}' THEN RAISE EXCEPTION 'poisoned key'; END IF;"
            " RETURN NEW; END $$"
        )
        await connection.execute(
            f"CREATE TRIGGER {namespace}_poison BEFORE INSERT OR UPDATE ON {namespace}"
            f" FOR EACH ROW EXECUTE FUNCTION {namespace}_poison()"
        )


@pytest.mark.parametrize("where", [0, 3, 6])
async def test_one_failing_write_fails_alone_and_the_others_commit_once(
    url: str, namespace: str, where: int
) -> None:
    keys = [f"k{i}" for i in range(7)]
    poison = keys[where] = f"k{where}-poison"  # first, in the middle or last in key order
    async with open_store(url, namespace=namespace) as store:
        # Writes of another statement first: psycopg prepares the batch's statement within the
        # pipeline (at its sixth run on the connection), and a failure before that point
        # aborts the preparation, so the store must not reuse the connection afterwards.
        for i in range(6):
            await store.record_and_claim(incoming(f"warm{i}"), now=T0, lease=None)
        await _poison(url, namespace, poison)
        sizes = _batch_sizes(store)
        answers = await _answers(
            [
                functools.partial(store.record_and_claim, incoming(key), now=T0, lease=LEASE)
                for key in keys
            ]
        )
        assert sizes == [7]
        for key, answer in zip(keys, answers, strict=True):
            if key == poison:
                assert answer is StoreError
            else:
                assert isinstance(answer, Admission)
                assert (answer.inserted, answer.state, answer.attempts) == (True, "processing", 1)
                assert answer.acquired
        for key in keys:
            if key != poison:
                record = await store.get(key)
                assert record is not None
                # Rolled back and sent again, each write still counted once.
                assert (record.deliveries, record.attempts) == (1, 1)
        stats = await store.stats()
        assert (stats.received, stats.processing, stats.duplicates) == (12, 6, 0)
        # The store goes on as before: a batch that fails nothing.
        more = await asyncio.gather(
            *(store.record_and_claim(incoming(f"m{i}"), now=T0, lease=LEASE) for i in range(3))
        )
        assert all(answer.acquired for answer in more)


async def test_an_unknown_key_fails_only_its_own_write(url: str, namespace: str) -> None:
    async with open_store(url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        answers = await _answers(
            [
                lambda: store.complete("unknown", "x", now=T0),
                lambda: store.complete("k1", first.token or "", now=T0),
                lambda: store.record_and_claim(incoming("k2"), now=T0, lease=LEASE),
            ]
        )
    assert answers[:2] == [UnknownCallbackError, True]
    assert isinstance(answers[2], Admission)


async def test_a_write_cancelled_while_queued_is_not_sent(url: str, namespace: str) -> None:
    async with open_store(url, namespace=namespace) as store:
        await store.stats()  # the table or connection exists
        tasks = [
            asyncio.ensure_future(store.record_and_claim(incoming(key), now=T0, lease=LEASE))
            for key in ("a", "b", "c", "d")
        ]
        await asyncio.sleep(0)  # all four queued: their batch has not left
        tasks[2].cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(answers[2], asyncio.CancelledError)
        assert [record.key for record in await store.list_callbacks()] == ["a", "b", "d"]


async def test_close_answers_what_is_queued_first(url: str, namespace: str) -> None:
    store = open_store(url, namespace=namespace)
    tasks = [
        asyncio.ensure_future(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE))
        for i in range(4)
    ]
    await asyncio.sleep(0)  # all four queued
    await store.close()
    assert all(task.done() and task.result().acquired for task in tasks)
    with pytest.raises(RuntimeError, match="closed"):
        await store.record_and_claim(incoming("late"), now=T0, lease=LEASE)
    async with open_store(url, namespace=namespace) as again:
        assert (await again.stats()).processing == 4


async def test_two_stores_batching_the_same_rows_in_opposite_orders_both_finish(
    url: str, namespace: str
) -> None:
    keys = [f"k{i:02}" for i in range(20)]
    async with (
        open_store(url, namespace=namespace) as one,
        open_store(url, namespace=namespace) as other,
    ):
        await one.stats()
        await other.stats()
        answers = await asyncio.gather(
            *(one.record_and_claim(incoming(key), now=T0, lease=LEASE) for key in keys),
            *(other.record_and_claim(incoming(key), now=T0, lease=LEASE) for key in keys[::-1]),
        )
        assert sum(answer.inserted for answer in answers) == 20
        assert sum(answer.acquired for answer in answers) == 20
        stats = await one.stats()
    assert (stats.received, stats.duplicates, stats.processing) == (20, 20, 20)


# --- reconnecting: a batch is retried, or not, as a whole -------------------------------------


class _Sends:
    """Counts the writes of batches (``MULTI`` with ``EVALSHA``). The first ``failures`` fail
    as a broken socket does, before anything reached the server; with ``lost``, the first one
    goes out in full and its connection breaks before the answer is read."""

    def __init__(self, *, failures: int = 0, lost: bool = False) -> None:
        self.failures, self.lost, self.sends = failures, lost, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection
        from redis.exceptions import ConnectionError as RedisConnectionError

        send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response
        sends = self
        doomed: set[int] = set()  # connections whose next read breaks

        async def counted(
            self: AbstractConnection, command: Any, check_health: bool = True
        ) -> None:
            packed = b"".join(part for part in command if isinstance(part, bytes))
            if b"MULTI" in packed and b"EVALSHA" in packed:
                sends.sends += 1
                if sends.sends <= sends.failures:
                    await self.disconnect(nowait=True)
                    raise RedisConnectionError("Error 32 while writing to socket. Broken pipe.")
                if sends.lost and sends.sends == 1:
                    doomed.add(id(self))
            await send(self, command, check_health)

        async def reading(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
            if id(self) in doomed:
                doomed.discard(id(self))
                await asyncio.sleep(0.2)  # Redis runs the transaction meanwhile
                await self.disconnect(nowait=True)
                raise RedisConnectionError("Connection closed by server.")
            return await read(self, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
        monkeypatch.setattr(AbstractConnection, "read_response", reading)


@pytest.mark.redis
async def test_redis_retries_a_batch_once_when_it_failed_while_sending(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        await store.record(incoming("warm"))  # a pooled connection, and the scripts loaded
        sends = _Sends(failures=1)
        sends.install(monkeypatch)
        answers = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(5))
        )
        assert all(answer.acquired for answer in answers)
        assert sends.sends == 2
        assert (await store.stats()).processing == 5


@pytest.mark.redis
async def test_redis_never_sends_again_a_batch_whose_answer_was_lost(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        await store.record(incoming("warm"))
        sends = _Sends(lost=True)
        sends.install(monkeypatch)
        answers = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(answer, StoreError) for answer in answers)
        assert sends.sends == 1
        # It ran once, on the server: every callback recorded and delivered once.
        records = {r.key: r for r in await store.list_callbacks()}
    assert all((records[f"k{i}"].deliveries, records[f"k{i}"].attempts) == (1, 1) for i in range(5))


@pytest.mark.redis
async def test_redis_loads_its_scripts_again_after_a_flush_and_runs_each_call_once(
    redis_url: str, namespace: str
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        await store.record(incoming("warm"))
        await store._client.script_flush()  # type: ignore[attr-defined] # as after a restart
        answers = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4))
        )
        assert all(answer.acquired for answer in answers)
        record = await store.get("k0")
    assert record is not None
    assert record.deliveries == 1


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        with postgres_cluster() as cluster:
            yield cluster
    except ServerUnavailable as exc:
        unavailable("a private PostgreSQL cluster", str(exc))


def _no_liveness_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send on a pooled connection without first checking that it is alive."""
    monkeypatch.setattr("runflow_callbacks.stores.postgres.readable_now", lambda fileno: False)


@pytest.mark.postgres
async def test_postgres_a_session_the_server_ended_while_idle_fails_or_retries_a_batch_whole(
    pg_cluster: PostgresCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import select

    pg_cluster.ensure_running()
    _no_liveness_check(monkeypatch)
    url = f"{pg_cluster.url}?options=-c%20idle_session_timeout%3D200"
    async with open_store(url, namespace=namespace) as store:
        admissions = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4))
        )
        [idle] = store._idle  # type: ignore[attr-defined] # one batch, one connection
        for _ in range(200):  # until the server has ended it (at most 10 s)
            if select.select([idle.fileno()], [], [], 0)[0]:
                break
            await asyncio.sleep(0.05)
        sizes = _batch_sizes(store)
        done = await asyncio.gather(
            *(store.complete(f"k{i}", a.token or "", now=T0) for i, a in enumerate(admissions)),
            return_exceptions=True,
        )
        assert sizes == [4]
        # The server ended the session while idle (57P05), before it read the batch. A lone
        # write learns that from the server and is sent again (test_store_hardening.py); in a
        # pipeline libpq reports a connection lost, without saying when, so the store cannot
        # tell that nothing ran. Sent again (all of it) or failed (all of it), never in part.
        if done != [True] * 4:
            assert all(isinstance(answer, StoreError) for answer in done)
            states = {record.key: record.state for record in await store.list_callbacks()}
            assert states == dict.fromkeys((f"k{i}" for i in range(4)), "processing")
            assert await store.complete("k0", admissions[0].token or "", now=T0)


@pytest.mark.postgres
async def test_postgres_never_sends_again_a_batch_that_may_have_committed(
    pg_cluster: PostgresCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_cluster.ensure_running()
    _no_liveness_check(monkeypatch)
    async with open_store(pg_cluster.url, namespace=namespace) as store:
        await store.record(incoming("warm"))
        connects: list[object] = []
        connect = store._connect  # type: ignore[attr-defined] # counting the connections made

        async def counting() -> Any:
            connects.append(None)
            return await connect()

        monkeypatch.setattr(store, "_connect", counting)
        pg_cluster.restart()  # the pooled connection is dead; the store does not know it
        sizes = _batch_sizes(store)
        answers = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4)),
            return_exceptions=True,
        )
        # Whether the batch ran is unknown to the store (here it did not): not sent again.
        assert sizes == [4]
        assert all(isinstance(answer, StoreError) for answer in answers)
        assert connects == []
        assert (await store.stats()).received == 1
        again = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4))
        )
        assert all(answer.inserted for answer in again)
