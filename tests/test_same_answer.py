"""The same request gets the same answer, and the same single log line, with or without a store.

Every combination of event kind and handler behaviour is sent once to a receiver without a
store and once to a receiver on each backend; the answers (status and body) and the one log
record each produces must be the same. A callback no handler takes is kept as ``unhandled``
and runs once a handler for its event exists, on every backend.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import httpx

from asgi_driver import SECRET, batch_body, run_body
from runflow_callbacks import CallbackReceiver, dumps_payload, sign
from servers import open_in

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore

URL = "http://receiver/callbacks/runflow"


def unknown_body() -> bytes:
    return dumps_payload({"event": "model.trained", "run_id": "r-1", "status": "succeeded"})


BODIES: dict[str, Callable[[], bytes]] = {
    "batch": batch_body,
    "run": run_body,
    "unknown event": unknown_body,
}
BEHAVIOURS = ["returns", "raises", "no handler for its event", "no handler at all"]


def _receiver(behaviour: str, store: CallbackStore | None) -> CallbackReceiver:
    receiver = CallbackReceiver(secrets=SECRET, store=store)

    async def returns(context: CallbackContext) -> None:
        return None

    def raises(context: CallbackContext) -> None:
        raise RuntimeError("the downstream service is down")

    if behaviour == "returns":
        receiver.on_any(returns)
    elif behaviour == "raises":
        receiver.on_any(raises)
    elif behaviour == "no handler for its event":
        receiver.on("batch.cancelled")(returns)
    return receiver


async def _post(receiver: CallbackReceiver, body: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=receiver)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        return await client.post(
            URL,
            content=body,
            headers={"Runflow-Signature": sign(body, SECRET), "Runflow-Request-Id": "req-1"},
        )


def _line(caplog: pytest.LogCaptureFixture) -> tuple[int, str, bool]:
    """The one log record of a callback: level, outcome, whether it carries a traceback."""
    records = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert len(records) == 1, [r.getMessage() for r in records]
    [record] = records
    outcome = record.__dict__["runflow_outcome"]
    caplog.clear()
    return record.levelno, outcome, record.exc_info is not None


async def test_every_callback_gets_the_same_answer_and_log_line_with_and_without_a_store(
    store_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    compared: list[tuple[str, str, Any]] = []
    for (kind, make_body), behaviour in itertools.product(BODIES.items(), BEHAVIOURS):
        body = make_body()
        plain = await _post(_receiver(behaviour, None), body)
        plain_line = _line(caplog)
        # A fresh namespace per case, so every case is a first delivery.
        case_namespace = f"{namespace}_{len(compared)}"
        async with open_in(store_url, case_namespace) as store:
            stored = await _post(_receiver(behaviour, store), body)
            stored_line = _line(caplog)
        assert (stored.status_code, stored.json()) == (plain.status_code, plain.json()), (
            kind,
            behaviour,
        )
        assert stored_line == plain_line, (kind, behaviour)
        compared.append((kind, behaviour, plain.json()))
    outcomes = {(kind, behaviour): answer for kind, behaviour, answer in compared}
    assert outcomes[("batch", "returns")] == {"status": "processed"}
    assert outcomes[("run", "raises")]["error"] == "handler_failed"
    assert outcomes[("unknown event", "no handler for its event")] == {"status": "unhandled"}
    assert outcomes[("batch", "no handler at all")] == {"status": "unhandled"}


async def test_a_callback_nobody_handled_runs_once_a_handler_for_its_event_exists(
    store_url: str, namespace: str
) -> None:
    body = batch_body()
    async with open_in(store_url, namespace) as store:
        before = _receiver("no handler for its event", store)
        first = await _post(before, body)
        assert (first.status_code, first.json()) == (200, {"status": "unhandled"})
        [record] = await store.list_callbacks()
        assert (record.state, record.attempts) == ("unhandled", 0)
        assert (await store.stats()).unhandled == 1

        runs: list[CallbackContext] = []
        after = CallbackReceiver(secrets=SECRET, store=store)

        @after.on("batch.succeeded")
        def handle(context: CallbackContext) -> None:
            runs.append(context)

        redelivered = await _post(after, body)
        assert (redelivered.status_code, redelivered.json()) == (200, {"status": "processed"})
        again = await _post(after, body)
        assert again.json()["status"] == "duplicate"
        assert len(runs) == 1
        assert (runs[0].attempt, runs[0].source, runs[0].key) == (1, "http", record.key)


async def test_inbox_retry_runs_a_callback_nobody_handled(store_url: str, namespace: str) -> None:
    body = run_body()
    async with open_in(store_url, namespace) as store:
        assert (await _post(_receiver("no handler at all", store), body)).json() == {
            "status": "unhandled"
        }
        [record] = await store.list_callbacks(state="unhandled")
        runs: list[CallbackContext] = []
        later = CallbackReceiver(secrets=SECRET, store=store)
        later.on("run.completed")(runs.append)
        assert later.processor is not None
        outcome = await later.processor.retry(record.key)
        assert (outcome.status, outcome.key) == ("processed", record.key)
        assert [context.source for context in runs] == ["retry"]


async def test_the_inbox_worker_keeps_what_no_handler_takes_as_unhandled(
    store_url: str, namespace: str
) -> None:
    async with open_in(store_url, namespace) as store:
        receiver = CallbackReceiver(secrets=SECRET, store=store, mode="inbox")
        receiver.on("batch.failed")(lambda context: None)
        answer = await _post(receiver, batch_body())
        assert answer.json()["status"] == "recorded"
        assert receiver.processor is not None
        [outcome] = await receiver.processor.run_due()
        assert outcome.status == "unhandled"
        assert await receiver.processor.run_due() == []  # not picked up again and again
        [record] = await store.list_callbacks()
        assert record.state == "unhandled"
