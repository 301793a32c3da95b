"""CallbackReceiver with a store: exactly-once answers, inbox mode, rejections counted."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.errors import StoreError
from runflow_callbacks.processing import ExponentialBackoff
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from runflow_callbacks.asgi import CallbackContext
    from runflow_callbacks.stores import CallbackStore

SECRET = "whsec_store_receiver_0123456789"
URL = "http://receiver/callbacks/runflow"


def _signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Runflow-Signature": sign(body, secret), "Content-Type": "application/json"}


def _batch_body(seed: int = 1) -> bytes:
    return dumps_payload(PayloadFactory(seed=seed).batch())


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CallbackStore]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/callbacks.db"
    opened = open_store(url)
    yield opened
    await opened.close()


def _client(receiver: CallbackReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=receiver), base_url="http://receiver"
    )


async def test_handler_runs_once_and_duplicates_answer_200(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=SECRET, store=store)
    calls: list[str | None] = []

    @receiver.on_any
    def handle(context: CallbackContext) -> None:
        calls.append(context.subject_id)

    body = _batch_body()
    async with _client(receiver) as client:
        first = await client.post(URL, content=body, headers=_signed(body))
        second = await client.post(URL, content=body, headers=_signed(body))
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert len(calls) == 1
    stats = await store.stats()
    assert (stats.received, stats.duplicates, stats.processed) == (1, 1, 1)
    [record] = await store.list_callbacks()
    assert record.body == body
    assert record.headers["Runflow-Signature"] == sign(body, SECRET)


async def test_failure_is_recorded_answered_500_and_retry_succeeds(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=SECRET, store=store)
    failures = [RuntimeError("downstream is down")]

    @receiver.on_any
    async def handle(context: CallbackContext) -> None:
        if failures:
            raise failures.pop()

    body = _batch_body()
    async with _client(receiver) as client:
        failed = await client.post(URL, content=body, headers=_signed(body))
        record = (await store.list_callbacks())[0]
        assert record.state == "failed"
        assert record.last_error == "RuntimeError: downstream is down"
        retried = await client.post(URL, content=body, headers=_signed(body))
    assert failed.status_code == 500
    assert "downstream" not in failed.text  # the error is logged and stored, never sent
    assert retried.status_code == 200
    assert (await store.stats()).processed == 1


async def test_concurrent_duplicate_is_not_acknowledged_before_the_first_finishes(
    store: CallbackStore,
) -> None:
    receiver = CallbackReceiver(secrets=SECRET, store=store)
    started = asyncio.Event()
    release = asyncio.Event()
    runs = 0

    @receiver.on_any
    async def slow(context: CallbackContext) -> None:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.wait_for(release.wait(), 10)

    body = _batch_body()
    async with _client(receiver) as client:
        first = asyncio.create_task(client.post(URL, content=body, headers=_signed(body)))
        await asyncio.wait_for(started.wait(), 10)
        second = await client.post(URL, content=body, headers=_signed(body))
        release.set()
        first_answer = await first
    assert second.status_code == 409
    assert second.json()["error"] == "in_progress"
    assert first_answer.status_code == 200
    assert runs == 1


async def test_inbox_mode_answers_once_recorded_and_the_worker_runs_the_handler(
    store: CallbackStore,
) -> None:
    receiver = CallbackReceiver(
        secrets=SECRET,
        store=store,
        mode="inbox",
        backoff=ExponentialBackoff(base=timedelta(milliseconds=10), cap=timedelta(seconds=1)),
    )
    done = threading.Event()
    attempts: list[int] = []

    @receiver.on("batch.succeeded")
    def handle(context: CallbackContext) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        done.set()

    body = dumps_payload(PayloadFactory(seed=3).batch(event="batch.succeeded"))
    async with _client(receiver) as client:
        answer = await client.post(URL, content=body, headers=_signed(body))
        assert answer.status_code == 200
        assert answer.json()["status"] == "recorded"
        assert attempts == []  # nothing ran while Runflow waited
        async with receiver.worker(poll_interval=timedelta(milliseconds=20)):
            for _ in range(500):
                if done.is_set():
                    break
                await asyncio.sleep(0.01)
    assert done.is_set()
    assert len(attempts) == 2
    [record] = await store.list_callbacks()
    assert (record.state, record.attempts) == ("processed", 2)


async def test_rejections_are_counted_in_the_store(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=SECRET, store=store)
    body = _batch_body()
    async with _client(receiver) as client:
        forged = await client.post(URL, content=body, headers=_signed(body, "whsec_forger_000"))
        unsigned = await client.post(URL, content=body)
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert receiver.rejections == {"signature_mismatch": 1, "missing_signature": 1}
    await receiver.flush_rejections()
    stats = await store.stats()
    assert (stats.rejected, stats.received) == (2, 0)


class _BrokenStore:
    """A store whose every call fails, as an unreachable database would."""

    def __getattr__(self, name: str) -> object:
        async def fail(*args: object, **kwargs: object) -> None:
            raise StoreError("connection refused")

        return fail


async def test_an_unreachable_store_answers_503_and_runs_nothing() -> None:
    receiver = CallbackReceiver(secrets=SECRET, store=_BrokenStore())  # type: ignore[arg-type]
    ran = False

    @receiver.on_any
    def handle(context: CallbackContext) -> None:
        nonlocal ran
        ran = True

    body = _batch_body()
    async with _client(receiver) as client:
        answer = await client.post(URL, content=body, headers=_signed(body))
    assert answer.status_code == 503
    assert answer.json()["error"] == "store_unavailable"
    assert not ran


def test_inbox_mode_without_a_store_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="needs a store"):
        CallbackReceiver(secrets=SECRET, mode="inbox")
