"""reconcile(): recover the callbacks a receiver missed from Runflow's delivery history.

Most tests read a real history over HTTP: an :class:`AsyncRunflowClient` against the fake
Runflow of the test kit, which delivered each batch or run to a URL where nothing listens and
gave up. Shapes the fake never answers (no bytes, bytes that are no callback, odd orders) come
from a small stand-in with the client's two history methods.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

import pytest

from runflow_callbacks.client import AsyncRunflowClient
from runflow_callbacks.errors import ConfigurationError, InvalidPayloadError, RunflowAPIError
from runflow_callbacks.handlers import HandlerTable
from runflow_callbacks.models import parse_delivery_history
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.reconcile import ItemStatus, ReconcileItem, ReconcileReport, reconcile
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port, serve_fake_runflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.models import (
        BatchCallbackDelivery,
        CallbackDelivery,
        CallbackPayload,
        RunCallbackDelivery,
    )
    from runflow_callbacks.stores import CallbackStore, StoredCallback
    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_reconcile_0123456789abcdef"
T0 = datetime(2026, 5, 6, 10, 0, tzinfo=timezone.utc)
UNKNOWN = "0190f2a4-0000-7000-8000-00000000dead"
NOT_OK: frozenset[ItemStatus] = frozenset({"failed", "dead", "invalid", "api_error"})


# --- the fake Runflow and its history ------------------------------------------------------


@pytest.fixture(scope="module")
def runflow() -> Iterator[RunningFakeRunflow]:
    """A fake Runflow that tries each delivery once (to a receiver that is down)."""
    with serve_fake_runflow(
        secret=SECRET, max_attempts=1, retry_delays_s=[0.01], attempt_timeout_s=2.0
    ) as running:
        yield running


@pytest.fixture(scope="module")
def down() -> str:
    """A callback URL where nothing listens: every delivery there fails."""
    return f"http://127.0.0.1:{free_port()}/callbacks/runflow"


@pytest.fixture
async def client(runflow: RunningFakeRunflow) -> AsyncIterator[AsyncRunflowClient]:
    async with AsyncRunflowClient(
        api_key=runflow.api_key, base_url=runflow.base_url, max_attempts=1
    ) as api:
        yield api


@pytest.fixture
async def store() -> AsyncIterator[CallbackStore]:
    async with open_store("memory://") as opened:
        yield opened


async def missed(
    runflow: RunningFakeRunflow, down: str, *, kind: str = "batch", event: str | None = None
) -> str:
    """Create a batch (or run) whose delivery Runflow gave up on; its id."""

    def create() -> str:
        if kind == "batch":
            subject = runflow.create_batch(callback_url=down, event=event)
            delivery = runflow.wait_for_delivery(batch_id=subject["id"])
        else:
            subject = runflow.create_run(callback_url=down, event=event)
            delivery = runflow.wait_for_delivery(run_id=subject["id"])
        assert delivery.status_code == "failed"
        subject_id: str = subject["id"]
        return subject_id

    return await asyncio.to_thread(create)


async def newest_delivery(client: AsyncRunflowClient, batch_id: str) -> BatchCallbackDelivery:
    *_, last = await client.batch_deliveries(batch_id)
    return last


# --- a stand-in for the client's history methods -------------------------------------------


def body_for(subject_id: str, *, kind: str = "batch", note: int = 0) -> bytes:
    event, status = (
        ("batch.succeeded", "succeeded") if kind == "batch" else ("run.completed", "succeeded")
    )
    payload = {"event": event, f"{kind}_id": subject_id, "status": status, "metadata": {"n": note}}
    return json.dumps(payload).encode()


def record(
    body: bytes | None, *, created_at: datetime | None = None, delivery_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """One delivery record as the history API answers it (only the fields reconcile reads)."""
    return {
        "id": None if delivery_id is None else str(delivery_id),
        "payload_bytes": None if body is None else body.decode(),
        "created_at": None if created_at is None else created_at.isoformat(),
    }


class History:
    """Answers ``batch_deliveries`` / ``run_deliveries`` from a dict; 404 for anything else."""

    def __init__(
        self,
        batches: dict[str, list[dict[str, Any]]] | None = None,
        runs: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.batches = batches or {}
        self.runs = runs or {}
        self.asked: list[tuple[str, str]] = []

    async def batch_deliveries(self, batch_id: str) -> list[BatchCallbackDelivery]:
        self.asked.append(("batch", batch_id))
        records = self._records(self.batches, batch_id)
        return cast("list[BatchCallbackDelivery]", parse_delivery_history(records, kind="batch"))

    async def run_deliveries(self, run_id: str) -> list[RunCallbackDelivery]:
        self.asked.append(("run", run_id))
        records = self._records(self.runs, run_id)
        return cast("list[RunCallbackDelivery]", parse_delivery_history(records, kind="run"))

    @staticmethod
    def _records(known: dict[str, list[dict[str, Any]]], subject_id: str) -> str:
        if subject_id not in known:
            raise RunflowAPIError(status=404, code="not_found", message="no such subject")
        return json.dumps(known[subject_id])

    @property
    def client(self) -> AsyncRunflowClient:
        return cast("AsyncRunflowClient", self)


# --- handlers --------------------------------------------------------------------------------


class Handler:
    """An async handler that keeps every context, fails on demand and may wait on a gate."""

    def __init__(self, *, failures: int = 0, gate: asyncio.Event | None = None) -> None:
        self.calls: list[CallbackContext] = []
        self.failures = failures
        self.gate = gate
        self.started = asyncio.Event()

    async def __call__(self, context: CallbackContext) -> None:
        self.calls.append(context)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("downstream unavailable")


async def stored(store: CallbackStore, key: str | None) -> StoredCallback:
    assert key is not None
    found = await store.get(key)
    assert found is not None
    return found


def custom_key(payload: CallbackPayload, body: bytes) -> str:
    return f"custom:{payload.subject_id}:{len(body)}"


# --- recovered, already processed ----------------------------------------------------------


async def test_a_missed_batch_is_recovered_with_the_exact_bytes_in_a_reconcile_context(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    delivery = await newest_delivery(client, batch_id)
    handler = Handler()
    report = await reconcile(client, CallbackProcessor(store, handler), batch_ids=[batch_id])

    key = f"batch:{batch_id}:batch.succeeded"
    assert report.items == [ReconcileItem("batch", batch_id, "recovered", key=key)]
    assert (report.recovered, report.ok) == (1, True)
    [context] = handler.calls
    assert context.source == "reconcile"
    assert context.signed is False
    assert (context.key, context.attempt) == (key, 1)
    assert context.body == delivery.body
    assert context.headers == {"Runflow-Delivery-Id": str(delivery.id)}
    assert context.secret_id == str(delivery.signing_secret_id)
    assert (context.secret_label, context.request_id) == (None, None)
    assert context.subject_id == batch_id
    saved = await stored(store, key)
    assert (saved.source, saved.deliveries, saved.state) == ("reconcile", 0, "processed")
    assert saved.body == delivery.body
    assert (await store.stats()).reconciled == 1


async def test_a_second_reconcile_of_the_same_batch_does_not_run_the_handler_again(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler()
    processor = CallbackProcessor(store, handler)
    first = await reconcile(client, processor, batch_ids=[batch_id])
    again = await reconcile(client, processor, batch_ids=[batch_id])

    assert [item.status for item in first.items] == ["recovered"]
    assert again.items == [
        ReconcileItem("batch", batch_id, "already_processed", key=first.items[0].key)
    ]
    assert (again.recovered, again.ok) == (0, True)
    assert len(handler.calls) == 1


async def test_batches_and_runs_are_reconciled_in_one_call_batches_first(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    run_id = await missed(runflow, down, kind="run")
    handler = Handler()
    report = await reconcile(
        client,
        CallbackProcessor(store, handler),
        run_ids=[run_id],
        batch_ids=(b for b in [batch_id]),
    )

    assert [(item.kind, item.subject_id, item.status, item.key) for item in report.items] == [
        ("batch", batch_id, "recovered", f"batch:{batch_id}:batch.succeeded"),
        ("run", run_id, "recovered", f"run:{run_id}:run.completed"),
    ]
    assert [context.subject_id for context in handler.calls] == [batch_id, run_id]
    assert report.recovered == report.count("recovered") == 2


async def test_the_processors_clock_stamps_what_reconcile_records(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler()
    processor = CallbackProcessor(store, handler, clock=lambda: T0, key=custom_key)
    report = await reconcile(client, processor, batch_ids=[batch_id])

    [item] = report.items
    assert item.status == "recovered"
    assert item.key is not None
    assert item.key.startswith(f"custom:{batch_id}:")
    assert handler.calls[0].received_at == T0
    assert (await stored(store, item.key)).received_at == T0


async def test_an_inbox_mode_processor_still_runs_the_handler_now(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler()
    report = await reconcile(
        client, CallbackProcessor(store, handler, mode="inbox"), batch_ids=[batch_id]
    )
    assert [item.status for item in report.items] == ["recovered"]
    assert len(handler.calls) == 1


# --- api_error, no_payload, invalid ---------------------------------------------------------


async def test_an_unknown_batch_is_an_api_error_and_the_next_subjects_still_run(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler()
    report = await reconcile(
        client, CallbackProcessor(store, handler), batch_ids=[UNKNOWN, batch_id]
    )

    unknown, found = report.items
    assert (unknown.kind, unknown.subject_id, unknown.status, unknown.key) == (
        "batch",
        UNKNOWN,
        "api_error",
        None,
    )
    assert unknown.detail is not None
    assert "404" in unknown.detail
    assert found.status == "recovered"
    assert report.ok is False
    assert len(handler.calls) == 1


async def test_an_unreachable_api_is_an_api_error_for_every_subject(store: CallbackStore) -> None:
    handler = Handler()
    async with AsyncRunflowClient(
        api_key="rf_test_api_key", base_url=f"http://127.0.0.1:{free_port()}", max_attempts=1
    ) as unreachable:
        report = await reconcile(
            unreachable, CallbackProcessor(store, handler), batch_ids=[UNKNOWN], run_ids=[UNKNOWN]
        )

    assert [(item.kind, item.status) for item in report.items] == [
        ("batch", "api_error"),
        ("run", "api_error"),
    ]
    for item in report.items:
        assert item.detail is not None
        assert "network_error" in item.detail
    assert report.ok is False
    assert handler.calls == []
    assert await store.list_callbacks() == []


async def test_a_batch_that_was_never_delivered_has_no_payload(
    runflow: RunningFakeRunflow, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id: str = (await asyncio.to_thread(runflow.create_batch, callback_url=None))["id"]
    handler = Handler()
    report = await reconcile(client, CallbackProcessor(store, handler), batch_ids=[batch_id])

    assert report.items == [ReconcileItem("batch", batch_id, "no_payload")]
    assert report.ok is True
    assert handler.calls == []


async def test_deliveries_without_payload_bytes_are_no_payload(store: CallbackStore) -> None:
    history = History(
        batches={"b": [record(None, created_at=T0), record(None)]},
        runs={"r": []},
    )
    handler = Handler()
    report = await reconcile(
        history.client, CallbackProcessor(store, handler), batch_ids=["b"], run_ids=["r"]
    )

    assert report.items == [
        ReconcileItem("batch", "b", "no_payload"),
        ReconcileItem("run", "r", "no_payload"),
    ]
    assert history.asked == [("batch", "b"), ("run", "r")]
    assert (report.ok, report.recovered) == (True, 0)
    assert handler.calls == []
    assert await store.list_callbacks() == []


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"", b'"a string"'])
async def test_bytes_that_are_no_callback_payload_are_invalid(
    store: CallbackStore, body: bytes
) -> None:
    history = History(batches={"b": [record(body, created_at=T0)]})
    handler = Handler()
    report = await reconcile(history.client, CallbackProcessor(store, handler), batch_ids=["b"])

    [item] = report.items
    assert (item.kind, item.subject_id, item.status, item.key) == ("batch", "b", "invalid", None)
    assert item.detail
    assert report.ok is False
    assert handler.calls == []
    assert await store.list_callbacks() == []


async def test_only_the_newest_delivery_counts_even_when_an_older_one_is_valid(
    store: CallbackStore,
) -> None:
    good = body_for(str(uuid.uuid4()))
    history = History(
        batches={
            "b": [record(good, created_at=T0), record(b"[1, 2]", created_at=T0 + timedelta(1))]
        }
    )
    report = await reconcile(history.client, CallbackProcessor(store, Handler()), batch_ids=["b"])
    assert [item.status for item in report.items] == ["invalid"]


# --- which delivery ----------------------------------------------------------------------------


async def test_the_newest_delivery_with_bytes_is_used_by_creation_time(
    store: CallbackStore,
) -> None:
    batch_id = str(uuid.uuid4())
    newest = uuid.uuid4()
    history = History(
        batches={
            batch_id: [
                record(
                    body_for(batch_id, note=2),
                    created_at=T0 + timedelta(hours=2),
                    delivery_id=newest,
                ),
                record(body_for(batch_id, note=0), created_at=T0, delivery_id=uuid.uuid4()),
                record(None, created_at=T0 + timedelta(hours=3), delivery_id=uuid.uuid4()),
                record(body_for(batch_id, note=1), created_at=T0 + timedelta(hours=1)),
            ]
        }
    )
    handler = Handler()
    report = await reconcile(
        history.client, CallbackProcessor(store, handler), batch_ids=[batch_id]
    )

    assert [item.status for item in report.items] == ["recovered"]
    [context] = handler.calls
    assert context.body == body_for(batch_id, note=2)
    assert context.headers == {"Runflow-Delivery-Id": str(newest)}


async def test_without_creation_times_the_last_listed_delivery_is_used(
    store: CallbackStore,
) -> None:
    run_id = str(uuid.uuid4())
    history = History(
        runs={run_id: [record(body_for(run_id, kind="run", note=n)) for n in range(3)]}
    )
    handler = Handler()
    report = await reconcile(history.client, CallbackProcessor(store, handler), run_ids=[run_id])

    assert report.items == [
        ReconcileItem("run", run_id, "recovered", key=f"run:{run_id}:run.completed")
    ]
    [context] = handler.calls
    assert context.body == body_for(run_id, kind="run", note=2)
    assert context.headers == {}  # the records have no delivery id
    assert context.secret_id is None


async def test_a_delivery_with_a_creation_time_is_preferred_to_one_without(
    store: CallbackStore,
) -> None:
    batch_id = str(uuid.uuid4())
    history = History(
        batches={
            batch_id: [
                record(body_for(batch_id, note=1), created_at=T0),
                record(body_for(batch_id, note=2)),
            ]
        }
    )
    handler = Handler()
    await reconcile(history.client, CallbackProcessor(store, handler), batch_ids=[batch_id])
    assert handler.calls[0].body == body_for(batch_id, note=1)


async def test_equal_creation_times_fall_back_to_the_list_order(store: CallbackStore) -> None:
    batch_id = str(uuid.uuid4())
    history = History(
        batches={batch_id: [record(body_for(batch_id, note=n), created_at=T0) for n in range(3)]}
    )
    handler = Handler()
    await reconcile(history.client, CallbackProcessor(store, handler), batch_ids=[batch_id])
    assert handler.calls[0].body == body_for(batch_id, note=2)


async def test_a_redelivery_is_recovered_once_from_its_newest_bytes(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    await client.redeliver_batch(batch_id)
    await asyncio.to_thread(runflow.wait_for_delivery, batch_id=batch_id, count=2)
    history = await client.batch_deliveries(batch_id)
    assert len(history) == 2
    handler = Handler()
    report = await reconcile(client, CallbackProcessor(store, handler), batch_ids=[batch_id])

    assert [item.status for item in report.items] == ["recovered"]
    [context] = handler.calls
    assert context.headers == {"Runflow-Delivery-Id": str(history[-1].id)}
    assert context.body == history[-1].body


# --- failed, dead, in_progress, unhandled --------------------------------------------------


async def test_a_failing_handler_is_failed_with_the_exception_type_and_the_error_is_kept(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler(failures=1)
    processor = CallbackProcessor(store, handler)
    report = await reconcile(client, processor, batch_ids=[batch_id])

    [item] = report.items
    assert (item.status, item.detail) == ("failed", "RuntimeError")
    assert item.key == f"batch:{batch_id}:batch.succeeded"
    assert (report.ok, report.recovered) == (False, 0)
    saved = await stored(store, item.key)
    assert (saved.state, saved.attempts) == ("failed", 1)
    assert saved.last_error == "RuntimeError: downstream unavailable"

    again = await reconcile(client, processor, batch_ids=[batch_id])
    assert [(i.status, i.detail) for i in again.items] == [("recovered", None)]
    assert [context.attempt for context in handler.calls] == [1, 2]
    assert (await stored(store, item.key)).state == "processed"


async def test_with_max_tries_1_a_failing_handler_puts_the_callback_in_the_dead_letter(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    handler = Handler(failures=2)
    processor = CallbackProcessor(store, handler, max_tries=1)
    first = await reconcile(client, processor, batch_ids=[batch_id])
    [item] = first.items
    # The run that exhausts the tries reports the handler's failure; the store moved it to dead.
    assert (item.status, item.detail) == ("failed", "RuntimeError")
    saved = await stored(store, item.key)
    assert saved.state == "dead"
    assert saved.last_error == "RuntimeError: downstream unavailable"

    again = await reconcile(client, processor, batch_ids=[batch_id])
    assert again.items == [ReconcileItem("batch", batch_id, "dead", key=item.key)]
    assert (again.ok, again.count("dead")) == (False, 1)
    assert len(handler.calls) == 1  # a dead callback is not run again


async def test_a_callback_another_run_holds_is_in_progress(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    release = asyncio.Event()
    holder = Handler(gate=release)
    holding = asyncio.create_task(
        reconcile(client, CallbackProcessor(store, holder), batch_ids=[batch_id])
    )
    try:
        await asyncio.wait_for(holder.started.wait(), 10)
        other = Handler()
        report = await reconcile(client, CallbackProcessor(store, other), batch_ids=[batch_id])
    finally:
        release.set()
        held = await asyncio.wait_for(holding, 10)

    key = f"batch:{batch_id}:batch.succeeded"
    assert report.items == [ReconcileItem("batch", batch_id, "in_progress", key=key)]
    assert report.ok is True
    assert other.calls == []
    assert [item.status for item in held.items] == ["recovered"]
    assert len(holder.calls) == 1


async def test_an_unhandled_event_is_kept_and_runs_once_a_handler_is_registered(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    table = HandlerTable()
    others = Handler()
    table.on("batch.failed")(others)
    processor = CallbackProcessor(store, table)
    key = f"batch:{batch_id}:batch.succeeded"

    first = await reconcile(client, processor, batch_ids=[batch_id])
    assert first.items == [ReconcileItem("batch", batch_id, "unhandled", key=key)]
    assert (first.ok, first.recovered) == (True, 0)
    assert (await stored(store, key)).state == "unhandled"

    handler = Handler()
    table.on("batch.succeeded")(handler)
    again = await reconcile(client, processor, batch_ids=[batch_id])
    assert again.items == [ReconcileItem("batch", batch_id, "recovered", key=key)]
    assert [context.event for context in handler.calls] == ["batch.succeeded"]
    assert [context.attempt for context in handler.calls] == [1]
    assert others.calls == []
    assert (await stored(store, key)).state == "processed"


# --- record only ------------------------------------------------------------------------------


async def test_without_a_processor_payloads_are_recorded_for_the_inbox_worker(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    run_id = await missed(runflow, down, kind="run")
    delivery = await newest_delivery(client, batch_id)
    report = await reconcile(client, None, store=store, batch_ids=[batch_id], run_ids=[run_id])

    batch_key, run_key = f"batch:{batch_id}:batch.succeeded", f"run:{run_id}:run.completed"
    assert report.items == [
        ReconcileItem("batch", batch_id, "recorded", key=batch_key),
        ReconcileItem("run", run_id, "recorded", key=run_key),
    ]
    assert (report.ok, report.recovered, report.count("recorded")) == (True, 0, 2)
    saved = await stored(store, batch_key)
    assert (saved.state, saved.source, saved.deliveries, saved.attempts) == (
        "received",
        "reconcile",
        0,
        0,
    )

    handler = Handler()
    outcomes = await CallbackProcessor(store, handler, mode="inbox").run_due()
    assert sorted((outcome.status, outcome.key) for outcome in outcomes) == [
        ("processed", batch_key),
        ("processed", run_key),
    ]
    [context] = [context for context in handler.calls if context.key == batch_key]
    assert context.source == "reconcile"
    assert context.signed is False
    assert context.body == delivery.body
    assert context.headers == {"Runflow-Delivery-Id": str(delivery.id)}
    assert context.attempt == 1

    again = await reconcile(client, None, store=store, batch_ids=[batch_id])
    assert again.items == [ReconcileItem("batch", batch_id, "already_processed", key=batch_key)]
    assert len(handler.calls) == 2


async def test_record_only_honours_the_key_function_and_the_clock(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    report = await reconcile(
        client, None, store=store, batch_ids=[batch_id], key=custom_key, clock=lambda: T0
    )

    [item] = report.items
    assert item.status == "recorded"
    assert item.key is not None
    assert item.key.startswith(f"custom:{batch_id}:")
    saved = await stored(store, item.key)
    assert (saved.received_at, saved.updated_at) == (T0, T0)
    assert await store.get(f"batch:{batch_id}:batch.succeeded") is None


async def test_record_only_without_key_or_clock_uses_the_receiver_defaults(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    report = await reconcile(client, None, store=store, batch_ids=[batch_id])
    [item] = report.items
    assert item.key == f"batch:{batch_id}:batch.succeeded"  # default_key
    received_at = (await stored(store, item.key)).received_at
    assert received_at.utcoffset() == timedelta(0)  # utc_now, not a test clock
    assert received_at > T0


async def test_record_only_into_sqlite_survives_for_a_worker_on_another_connection(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, tmp_path: Path
) -> None:
    batch_id = await missed(runflow, down)
    url = f"sqlite:///{tmp_path}/x.db"
    async with open_store(url) as recording:
        report = await reconcile(client, None, store=recording, batch_ids=[batch_id])
    assert [item.status for item in report.items] == ["recorded"]

    handler = Handler()
    async with open_store(url) as working:
        outcomes = await CallbackProcessor(working, handler, mode="inbox").run_due()
        assert [outcome.status for outcome in outcomes] == ["processed"]
        saved = await stored(working, report.items[0].key)
        assert (saved.source, saved.deliveries, saved.state) == ("reconcile", 0, "processed")
        again = await reconcile(client, None, store=working, batch_ids=[batch_id])
    assert [item.status for item in again.items] == ["already_processed"]
    assert [context.source for context in handler.calls] == ["reconcile"]


async def test_record_only_keeps_the_api_errors_and_invalid_payloads_apart(
    store: CallbackStore,
) -> None:
    history = History(batches={"bad": [record(b"[1, 2]")], "empty": []})
    report = await reconcile(
        history.client, None, store=store, batch_ids=["bad", "empty", "missing"]
    )
    assert [item.status for item in report.items] == ["invalid", "no_payload", "api_error"]
    assert await store.list_callbacks() == []


# --- impossible calls ---------------------------------------------------------------------------


async def test_reconcile_needs_a_processor_or_a_store() -> None:
    history = History()
    with pytest.raises(ConfigurationError, match="needs a processor, or a store"):
        await reconcile(history.client, None, batch_ids=["b"])
    assert history.asked == []


@pytest.mark.parametrize(
    "extra",
    [{"key": custom_key}, {"clock": lambda: T0}, {"key": custom_key, "clock": lambda: T0}],
    ids=["key", "clock", "both"],
)
async def test_a_processor_with_key_or_clock_arguments_is_refused(
    store: CallbackStore, extra: dict[str, Any]
) -> None:
    history = History()
    with pytest.raises(ConfigurationError, match="give them to the processor"):
        await reconcile(
            history.client, CallbackProcessor(store, Handler()), batch_ids=["b"], **extra
        )
    assert history.asked == []


async def test_no_subjects_make_an_empty_report(store: CallbackStore) -> None:
    history = History()
    report = await reconcile(history.client, CallbackProcessor(store, Handler()))
    assert (report.items, report.ok, report.recovered) == ([], True, 0)
    assert history.asked == []


async def test_each_item_is_logged_with_its_detail(
    store: CallbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    history = History(batches={"empty": []})
    with caplog.at_level(logging.INFO, logger="runflow_callbacks.reconcile"):
        await reconcile(history.client, None, store=store, batch_ids=["empty", "missing"])
    assert [r.getMessage() for r in caplog.records if r.name == "runflow_callbacks.reconcile"] == [
        "reconcile batch empty: no_payload",
        "reconcile batch missing: api_error (Runflow API answered 404 not_found: no such subject)",
    ]


# --- ReconcileReport ----------------------------------------------------------------------------


def test_a_report_counts_its_items_by_status() -> None:
    report = ReconcileReport(
        [
            ReconcileItem("batch", "b1", "recovered", key="k1"),
            ReconcileItem("batch", "b2", "recovered", key="k2"),
            ReconcileItem("run", "r1", "already_processed", key="k3"),
            ReconcileItem("run", "r2", "no_payload"),
        ]
    )
    assert report.count("recovered") == report.recovered == 2
    assert report.count("already_processed") == report.count("no_payload") == 1
    assert report.count("failed") == 0
    assert report.ok is True


@pytest.mark.parametrize(
    "status",
    [
        "recovered",
        "already_processed",
        "recorded",
        "unhandled",
        "in_progress",
        "no_payload",
        "failed",
        "dead",
        "invalid",
        "api_error",
    ],
)
def test_a_report_is_ok_unless_an_item_failed_was_dead_invalid_or_unreadable(
    status: ItemStatus,
) -> None:
    report = ReconcileReport(
        [ReconcileItem("batch", "b0", "recovered"), ReconcileItem("run", "r", status)]
    )
    assert report.ok is (status not in NOT_OK)


def test_an_empty_report_is_ok_and_counts_nothing() -> None:
    report = ReconcileReport()
    assert (report.ok, report.recovered, report.count("recovered")) == (True, 0, 0)
    assert report.to_json() == {"counts": {}, "items": []}


def test_the_json_report_has_counts_by_status_and_one_object_per_item_in_order() -> None:
    report = ReconcileReport(
        [
            ReconcileItem("batch", "b1", "recovered", key="batch:b1:batch.succeeded"),
            ReconcileItem("run", "r1", "failed", key="run:r1:run.failed", detail="RuntimeError"),
            ReconcileItem("batch", "b2", "recovered", key="batch:b2:batch.succeeded"),
            ReconcileItem("batch", "b3", "api_error", detail="Runflow API answered 404"),
        ]
    )
    data = report.to_json()
    assert data == {
        "counts": {"recovered": 2, "failed": 1, "api_error": 1},
        "items": [
            {
                "kind": "batch",
                "subject_id": "b1",
                "status": "recovered",
                "key": "batch:b1:batch.succeeded",
                "detail": None,
            },
            {
                "kind": "run",
                "subject_id": "r1",
                "status": "failed",
                "key": "run:r1:run.failed",
                "detail": "RuntimeError",
            },
            {
                "kind": "batch",
                "subject_id": "b2",
                "status": "recovered",
                "key": "batch:b2:batch.succeeded",
                "detail": None,
            },
            {
                "kind": "batch",
                "subject_id": "b3",
                "status": "api_error",
                "key": None,
                "detail": "Runflow API answered 404",
            },
        ],
    }
    assert json.loads(json.dumps(data)) == data


async def test_the_json_of_a_real_report_is_what_reconcile_json_prints(
    runflow: RunningFakeRunflow, down: str, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    batch_id = await missed(runflow, down)
    report = await reconcile(
        client, CallbackProcessor(store, Handler()), batch_ids=[batch_id, UNKNOWN]
    )
    data = report.to_json()
    assert data["counts"] == {"recovered": 1, "api_error": 1}
    items = cast("list[dict[str, object]]", data["items"])
    assert [(item["subject_id"], item["status"]) for item in items] == [
        (batch_id, "recovered"),
        (UNKNOWN, "api_error"),
    ]
    assert all(set(item) == {"kind", "subject_id", "status", "key", "detail"} for item in items)


class _Unreadable:
    """A client whose history answer does not match the model, or refuses the id."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def batch_deliveries(self, batch_id: str) -> list[CallbackDelivery]:
        raise self.error

    async def run_deliveries(self, run_id: str) -> list[CallbackDelivery]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [InvalidPayloadError("the history answer is not a list"), ConfigurationError("bad id")],
)
async def test_an_unreadable_history_is_an_api_error_and_the_report_survives(
    error: Exception,
) -> None:
    async with open_store("memory://") as store:
        client = cast("AsyncRunflowClient", _Unreadable(error))
        report = await reconcile(client, None, store=store, batch_ids=["b-1"], run_ids=["r-1"])
    assert [item.status for item in report.items] == ["api_error", "api_error"]
    assert report.items[0].detail == str(error)
    assert not report.ok
