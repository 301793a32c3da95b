"""Verified callbacks are never lost, doubled or answered 500; forged ones stay cheap.

Each test here failed on 0.1: an ambiguous default key, an unrecordable long key, odd strings
in a signed body, UTF-16 bodies accepted, and one store write per forged request.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import CallbackReceiver, sign
from runflow_callbacks.errors import StoreError
from runflow_callbacks.keys import MAX_KEY_CHARS, bounded, default_key
from runflow_callbacks.models import parse_callback
from runflow_callbacks.receiver import REJECTIONS_SAVED_EVERY_SECONDS
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port
from servers import open_in

if TYPE_CHECKING:
    from pathlib import Path

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore

SECRET = "whsec_hardening_0123456789"
URL = "http://receiver/callbacks/runflow"


async def _post(receiver: CallbackReceiver, body: bytes, *, secret: str = SECRET) -> httpx.Response:
    transport = httpx.ASGITransport(app=receiver)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        return await client.post(
            URL, content=body, headers={"Runflow-Signature": sign(body, secret)}
        )


def _recording(store: CallbackStore) -> tuple[CallbackReceiver, list[CallbackContext]]:
    receiver = CallbackReceiver(secrets=SECRET, store=store)
    runs: list[CallbackContext] = []
    receiver.on_any(runs.append)
    return receiver, runs


# --- 1. the default key is unambiguous --------------------------------------------------------


def test_parts_holding_the_separator_no_longer_share_a_key() -> None:
    first = b'{"event": "c", "batch_id": "a:b"}'
    second = b'{"event": "b:c", "batch_id": "a"}'
    keys = {default_key(parse_callback(body), body) for body in (first, second)}
    assert len(keys) == 2


def test_keys_of_ordinary_ids_and_events_are_what_stores_already_hold() -> None:
    body = b'{"event": "batch.succeeded", "batch_id": "0190f2a4-0000-7000-8000-000000000002"}'
    assert default_key(parse_callback(body), body) == (
        "batch:0190f2a4-0000-7000-8000-000000000002:batch.succeeded"
    )


async def test_two_callbacks_whose_parts_run_together_both_run_on_every_backend(
    store_url: str, namespace: str
) -> None:
    async with open_in(store_url, namespace) as store:
        receiver, runs = _recording(store)
        for body in (b'{"event": "c", "batch_id": "a:b"}', b'{"event": "b:c", "batch_id": "a"}'):
            answer = await _post(receiver, body)
            assert answer.json() == {"status": "processed"}
        assert [context.event for context in runs] == ["c", "b:c"]


# --- 2. a long key is bounded, never refused --------------------------------------------------


def test_a_long_key_is_bounded_and_distinct_keys_stay_distinct() -> None:
    long_a, long_b = "e" * 600 + "a", "e" * 600 + "b"
    assert len(bounded(long_a)) == MAX_KEY_CHARS
    assert bounded(long_a) != bounded(long_b)
    assert bounded("short") == "short"
    # A kept key is always shorter than a bounded one: the two kinds cannot meet.
    assert len(bounded("k" * (MAX_KEY_CHARS - 1))) == MAX_KEY_CHARS - 1
    assert bounded("k" * MAX_KEY_CHARS) != "k" * MAX_KEY_CHARS


async def test_a_signed_callback_with_a_600_character_event_is_recorded_on_every_backend(
    store_url: str, namespace: str
) -> None:
    event = "model." + "x" * 600
    body = json.dumps({"event": event, "run_id": "r-1", "status": "succeeded"}).encode()
    async with open_in(store_url, namespace) as store:
        receiver, runs = _recording(store)
        first, again = await _post(receiver, body), await _post(receiver, body)
        assert (first.status_code, first.json()) == (200, {"status": "processed"})
        assert again.json()["status"] == "duplicate"
        [record] = await store.list_callbacks()
        assert len(record.key) == MAX_KEY_CHARS
        assert record.event == event  # the full value stays in the record
        assert len(runs) == 1


# --- 3. any string JSON allows is recordable --------------------------------------------------


@pytest.mark.parametrize(
    "value", ["lone \\udcff surrogate", "nul \\u0000 inside", "line\\u2028separator", "emoji 🎉"]
)
async def test_odd_strings_in_a_signed_body_are_recorded_and_run_once_on_every_backend(
    store_url: str, namespace: str, value: str
) -> None:
    body = (
        '{"event": "batch.' + value + '", "batch_id": "id-' + value + '", "status": "succeeded"}'
    ).encode()
    async with open_in(store_url, namespace) as store:
        receiver, runs = _recording(store)
        first, again = await _post(receiver, body), await _post(receiver, body)
        assert (first.status_code, first.json()) == (200, {"status": "processed"})
        assert again.json()["status"] == "duplicate"
        assert len(runs) == 1
        [record] = await store.list_callbacks()
        assert record.event == runs[0].event
        assert record.body == body


# --- 5. a body that is not UTF-8 JSON is a 400 ------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
async def test_a_signed_utf16_or_utf32_json_body_is_400(encoding: str) -> None:
    body = json.dumps({"event": "run.completed", "run_id": "r-1"}).encode(encoding)
    receiver = CallbackReceiver(secrets=SECRET)
    receiver.on_any(lambda context: None)
    answer = await _post(receiver, body)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_payload")


# --- 6. forged requests cost no store write each ----------------------------------------------


class _CountingStore:
    """Wraps a store and counts the rejection writes it is asked for."""

    def __init__(self, inner: CallbackStore) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def note_rejected(self, count: int = 1) -> None:
        self.writes.append(count)
        await self.inner.note_rejected(count)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_flood_of_forged_requests_is_counted_in_memory_and_written_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr("runflow_callbacks.receiver.time.monotonic", lambda: now[0])
    inner = open_store("memory://")
    store = _CountingStore(inner)
    receiver = CallbackReceiver(secrets=SECRET, store=store)  # type: ignore[arg-type] # a wrapper
    body = b'{"event": "run.completed", "run_id": "r-1"}'
    caplog.set_level(logging.ERROR, logger="runflow_callbacks")
    for _ in range(200):
        assert (await _post(receiver, body, secret="whsec_forger_0000000")).status_code == 401
    assert store.writes == []  # none within the first interval
    now[0] += REJECTIONS_SAVED_EVERY_SECONDS
    await _post(receiver, body, secret="whsec_forger_0000000")
    await receiver.flush_rejections()
    assert sum(store.writes) == 201
    assert len(store.writes) <= 2
    assert (await inner.stats()).rejected == 201
    assert receiver.rejections == {"signature_mismatch": 201}


# --- 9. health probes tell the truth ----------------------------------------------------------


async def test_every_backend_is_ready_when_it_can_record(store_url: str, namespace: str) -> None:
    async with open_in(store_url, namespace) as store:
        await store.ready()
        assert (await store.stats()).rejected == 0  # the probe changed nothing


async def test_a_read_only_sqlite_store_is_not_ready(tmp_path: Path) -> None:
    from runflow_callbacks.stores.sqlite import SQLiteStore

    async with SQLiteStore(tmp_path / "cb.db") as writable:
        await writable.ready()
    async with SQLiteStore(tmp_path / "cb.db", read_only=True) as store:
        with pytest.raises(StoreError):
            await store.ready()


class _DownStore:
    """A store whose every call fails, as an unreachable database would."""

    def __getattr__(self, name: str) -> object:
        async def fail(*args: object, **kwargs: object) -> None:
            raise StoreError("connection refused")

        return fail


async def test_readyz_is_503_while_the_store_cannot_record_and_healthz_stays_ok() -> None:
    from runflow_callbacks.app import create_app

    async def probe(app: object) -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/healthz"), await client.get("/readyz")

    healthy = create_app(secrets=SECRET, store=open_store("memory://"))
    health, ready = await probe(healthy)
    assert (health.status_code, ready.status_code, ready.json()) == (200, 200, {"status": "ready"})
    down = create_app(secrets=SECRET, store=_DownStore())  # type: ignore[arg-type]
    health, ready = await probe(down)
    assert (health.status_code, ready.status_code) == (200, 503)
    assert ready.json()["error"] == "store_unavailable"


def test_serve_refuses_to_start_on_a_store_it_cannot_reach(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "RUNFLOW_CALLBACK_SECRETS": SECRET}
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [sys.executable, "-m", "runflow_callbacks", "serve", "--store", unreachable],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("runflow-callbacks serve:")
