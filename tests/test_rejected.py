"""Rejected requests kept by the receiver, and replayed once the secrets are right.

The receiver gathers what it refused in a bounded ring and writes it with the rejection
counts; :func:`runflow_callbacks.rejected.replay` verifies a kept request again and hands it
to the exactly-once engine. Every backend keeps the same thing (``store_url``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import CallbackReceiver, sign
from runflow_callbacks.errors import ConfigurationError, OverloadedError, SignatureMismatchError
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.reader import CallbackReader
from runflow_callbacks.rejected import RejectedKeeper, kept_headers, replay
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.verifier import Verifier
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore

OLD = "whsec_old_secret_0123456789"
NEW = "whsec_new_secret_9876543210"
URL = "http://receiver/callbacks/runflow"


def body_of(seed: int) -> bytes:
    return dumps_payload(PayloadFactory(seed=seed).batch("batch.succeeded"))


async def post(
    receiver: CallbackReceiver, body: bytes, *, secret: str, extra: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=receiver)
    headers = {"Runflow-Signature": sign(body, secret), "Runflow-Request-Id": "req-x"}
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        return await client.post(URL, content=body, headers={**headers, **(extra or {})})


@pytest.fixture
async def store(store_url: str, namespace: str) -> AsyncIterator[CallbackStore]:
    opened = open_store(store_url, namespace=namespace)
    yield opened
    await opened.close()


# --- what is kept ------------------------------------------------------------------------------


def test_credentials_are_never_kept() -> None:
    headers = kept_headers(
        [
            (b"Authorization", b"Bearer abc"),
            (b"Cookie", b"session=1"),
            (b"X-Api-Key", b"k"),
            (b"X-Auth-Token", b"t"),
            (b"X-Client-Secret", b"s"),
            (b"Runflow-Signature", b"ab" * 32),
            (b"User-Agent", b"Runflow/1"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-For", b"10.0.0.2"),
        ]
    )
    assert headers == {
        "runflow-signature": "ab" * 32,
        "user-agent": "Runflow/1",
        "x-forwarded-for": "10.0.0.1, 10.0.0.2",
    }


def test_headers_are_bounded() -> None:
    many = [(f"x-h{number}".encode(), b"v" * 5000) for number in range(500)]
    headers = kept_headers(many)
    assert len(headers) == 64
    assert all(len(value) == 2048 for value in headers.values())


def _reader(body: bytes, secret: str = NEW) -> CallbackReader:
    from runflow_callbacks.options import ReceiverOptions

    reader = CallbackReader(
        [(b"runflow-signature", sign(body, secret).encode())],
        verifier=Verifier(OLD),
        options=ReceiverOptions(),
    )
    reader.feed(body)
    return reader


def test_the_keeper_is_a_bounded_ring() -> None:
    from datetime import datetime, timezone

    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    keeper = RejectedKeeper(3, max_bytes=300)
    assert keeper.body_bytes == 100
    body = b'{"event": "batch.succeeded", "pad": "' + b"x" * 500 + b'"}'
    for number in range(10):
        reader = _reader(body)
        with pytest.raises(SignatureMismatchError) as caught:
            reader.finish()
        keeper.add(
            caught.value,
            path=f"/p{number}",
            raw_headers=[(b"runflow-signature", b"ab" * 32)],
            reader=reader,
            at=at,
        )
    keeper.add(OverloadedError(budget=1), path="/o", raw_headers=[], reader=None, at=at)
    taken = keeper.take()
    assert [request.path for request in taken] == ["/p7", "/p8", "/p9"]  # the newest, in order
    assert all(request.body == body[:100] for request in taken)
    assert all(request.body_bytes == len(body) and request.truncated for request in taken)
    assert keeper.take() == []
    keeper.give_back(taken[:2])
    assert [request.path for request in keeper.take()] == ["/p7", "/p8"]


@pytest.mark.parametrize(("keep", "max_bytes"), [(0, 10), (-1, 10), (2, -1), (True, 10)])
def test_the_keeper_refuses_bad_bounds(keep: int, max_bytes: int) -> None:
    with pytest.raises(ConfigurationError):
        RejectedKeeper(keep, max_bytes=max_bytes)


def test_keeping_needs_a_store() -> None:
    with pytest.raises(ConfigurationError, match="store"):
        CallbackReceiver(secrets=OLD, keep_rejected=10)


# --- through the receiver ----------------------------------------------------------------------


async def test_the_receiver_keeps_what_it_refused(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=OLD, store=store, keep_rejected=10)
    body = body_of(1) + b"  \xff"  # not UTF-8: kept byte for byte
    answer = await post(receiver, body, secret=NEW, extra={"Authorization": "Bearer hush"})
    assert answer.status_code == 401
    answer = await post(receiver, b"not json", secret=OLD)
    assert answer.status_code == 400
    too_big = CallbackReceiver(secrets=OLD, store=store, keep_rejected=10, max_body_bytes=64)
    assert (await post(too_big, body_of(2), secret=OLD)).status_code == 413
    assert await store.list_rejected() == []  # nothing written per request
    await receiver.flush_rejections()
    await too_big.flush_rejections()
    large, invalid, mismatch = await store.list_rejected()
    assert (mismatch.reason, invalid.reason, large.reason) == (
        "signature_mismatch",
        "invalid_payload",
        "payload_too_large",
    )
    assert mismatch.body == body
    assert mismatch.body_bytes == len(body)
    assert mismatch.path == "/callbacks/runflow"
    assert mismatch.headers["runflow-signature"] == sign(body, NEW)
    assert mismatch.headers["runflow-request-id"] == "req-x"
    assert "authorization" not in mismatch.headers
    assert invalid.body == b"not json"
    assert (large.body, large.truncated) == (b"", large.body_bytes > 0)
    assert (await store.stats()).rejected == 3


async def test_a_flood_keeps_only_the_newest_in_one_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writes: list[int] = []
    inner = open_store("memory://")

    class Counting:
        async def keep_rejected(self, requests: list[object], *, keep: int) -> None:
            writes.append(len(requests))
            await inner.keep_rejected(requests, keep=keep)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

    receiver = CallbackReceiver(secrets=OLD, store=Counting(), keep_rejected=5)  # type: ignore[arg-type]
    caplog.set_level(logging.CRITICAL, logger="runflow_callbacks")
    bodies = [body_of(seed) for seed in range(300)]
    for body in bodies:
        assert (await post(receiver, body, secret=NEW)).status_code == 401
    assert receiver.keeper is not None
    assert len(receiver.keeper) == 5  # the ring never grows
    await receiver.flush_rejections()
    assert writes == [5]
    kept = await inner.list_rejected()
    assert [request.body for request in kept] == bodies[:-6:-1]


# --- replay ------------------------------------------------------------------------------------


async def test_replay_recovers_a_wrong_secret_exactly_once(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=OLD, store=store, keep_rejected=10)
    bodies = [body_of(seed) for seed in range(3)]
    for body in bodies:
        assert (await post(receiver, body, secret=NEW)).status_code == 401
    await receiver.flush_rejections()
    kept = await store.list_rejected()
    runs: list[CallbackContext] = []
    processor = CallbackProcessor(store, runs.append)
    verifier = Verifier([OLD, NEW])
    results = [
        await replay(store, request.id or "", verifier=verifier, processor=processor, run=True)
        for request in reversed(kept)
    ]
    assert [result.status for result in results] == ["replayed"] * 3
    assert [result.outcome for result in results] == ["processed"] * 3
    assert [context.body for context in runs] == bodies
    assert all(context.secret_label is not None for context in runs)
    # The original arrival time is the record's.
    first = await store.get(results[0].key or "")
    assert first is not None
    assert first.received_at == kept[-1].received_at
    assert (first.state, first.deliveries) == ("processed", 1)
    # Marked replayed; a second replay is a duplicate and runs nothing.
    marked = await store.get_rejected(kept[-1].id or "")
    assert marked is not None
    assert marked.replayed_key == results[0].key
    again = await replay(store, kept[-1].id or "", verifier=verifier, processor=processor, run=True)
    assert (again.status, again.outcome) == ("replayed", "duplicate")
    assert len(runs) == 3


async def test_replay_without_running_records_for_the_worker(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=OLD, store=store, keep_rejected=10)
    assert (await post(receiver, body_of(7), secret=NEW)).status_code == 401
    await receiver.flush_rejections()
    [request] = await store.list_rejected()
    result = await replay(
        store,
        request.id or "",
        verifier=Verifier(NEW),
        processor=CallbackProcessor(store),
        run=False,
    )
    assert (result.status, result.outcome) == ("replayed", "recorded")
    record = await store.get(result.key or "")
    assert record is not None
    assert record.state == "received"


async def test_what_still_does_not_verify_is_left_alone(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=OLD, store=store, keep_rejected=10, max_body_bytes=4096)
    assert (await post(receiver, body_of(1), secret="whsec_someone_else_000")).status_code == 401
    await receiver.flush_rejections()
    [request] = await store.list_rejected()
    processor = CallbackProcessor(store, lambda context: None)
    result = await replay(
        store, request.id or "", verifier=Verifier(NEW), processor=processor, run=True
    )
    assert (result.status, result.reason) == ("unverified", "signature_mismatch")
    assert (await store.stats()).received == 0
    kept = await store.get_rejected(request.id or "")
    assert kept is not None
    assert kept.replayed_at is None
    unknown = await replay(store, "424242", verifier=Verifier(NEW), processor=processor, run=True)
    assert unknown.status == "unknown"


async def test_a_cut_body_is_not_replayed(store: CallbackStore) -> None:
    receiver = CallbackReceiver(secrets=OLD, store=store, keep_rejected=2, keep_rejected_bytes=200)
    assert (await post(receiver, body_of(1), secret=NEW)).status_code == 401
    await receiver.flush_rejections()
    [request] = await store.list_rejected()
    assert request.truncated
    assert len(request.body) == 100
    result = await replay(
        store,
        request.id or "",
        verifier=Verifier(NEW),
        processor=CallbackProcessor(store, lambda context: None),
        run=True,
    )
    assert result.status == "truncated"
    assert (await store.stats()).received == 0
