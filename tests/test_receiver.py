"""CallbackReceiver: handlers per event, answers per outcome, the single dispatch point."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from asgi_driver import PATH, SECRET, batch_body, drive, run_body, signed
from runflow_callbacks import (
    CallbackContext,
    CallbackMiddleware,
    CallbackReceiver,
    ConfigurationError,
    Outcome,
    sign,
)
from runflow_callbacks.receiver import FAILED, PROCESSED, STORE_UNAVAILABLE, UNHANDLED
from runflow_callbacks.testing import serve_in_thread

if TYPE_CHECKING:
    from starlette.types import Message


def make_receiver(**options: Any) -> CallbackReceiver:
    options.setdefault("secrets", SECRET)
    return CallbackReceiver(**options)


async def post(receiver: Any, body: bytes, **extra: str) -> Any:
    return await drive(receiver, chunks=[body], headers=signed(body, **extra))


# --- dispatch -------------------------------------------------------------------------------


async def test_the_handler_of_the_event_runs_and_the_answer_is_processed() -> None:
    receiver = make_receiver()
    seen: list[CallbackContext] = []

    @receiver.on("batch.succeeded")
    async def on_batch(context: CallbackContext) -> None:
        seen.append(context)

    result = await post(receiver, batch_body())
    assert (result.status, result.json()) == (200, {"status": "processed"})
    assert [c.event for c in seen] == ["batch.succeeded"]


async def test_one_handler_for_several_events() -> None:
    receiver = make_receiver()
    seen: list[str | None] = []

    @receiver.on("batch.succeeded", "run.completed")
    async def handler(context: CallbackContext) -> None:
        seen.append(context.event)

    await post(receiver, batch_body())
    await post(receiver, run_body())
    assert seen == ["batch.succeeded", "run.completed"]
    assert set(receiver.events) == {"batch.succeeded", "run.completed"}


async def test_on_any_handles_events_without_their_own_handler() -> None:
    receiver = make_receiver()
    calls: list[tuple[str, str | None]] = []

    @receiver.on("batch.succeeded")
    async def specific(context: CallbackContext) -> None:
        calls.append(("specific", context.event))

    @receiver.on_any
    async def fallback(context: CallbackContext) -> None:
        calls.append(("any", context.event))

    await post(receiver, batch_body())
    await post(receiver, run_body())
    await post(receiver, batch_body(event="batch.brand_new_event"))
    assert calls == [
        ("specific", "batch.succeeded"),
        ("any", "run.completed"),
        ("any", "batch.brand_new_event"),
    ]
    assert receiver.handler_for("batch.succeeded") is specific
    assert receiver.handler_for("anything") is fallback
    assert receiver.handler_for(None) is fallback


async def test_sync_handlers_run_in_a_worker_thread() -> None:
    receiver = make_receiver()
    threads: list[int] = []

    @receiver.on("batch.succeeded")
    def blocking(context: CallbackContext) -> None:
        threads.append(threading.get_ident())

    result = await post(receiver, batch_body())
    assert result.status == 200
    assert threads
    assert threads[0] != threading.get_ident()


async def test_an_object_with_an_async_call_is_awaited() -> None:
    receiver = make_receiver()

    class Handler:
        def __init__(self) -> None:
            self.loop_thread: int | None = None

        async def __call__(self, context: CallbackContext) -> None:
            self.loop_thread = threading.get_ident()

    handler = receiver.on_any(Handler())
    await post(receiver, run_body())
    assert handler.loop_thread == threading.get_ident()


async def test_no_handler_is_200_unhandled_with_an_info_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    receiver = make_receiver()

    @receiver.on("batch.failed")
    async def other(context: CallbackContext) -> None: ...

    result = await post(receiver, batch_body(), runflow_request_id="r-7")
    assert (result.status, result.json()) == (200, {"status": "unhandled"})
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "outcome=unhandled" in record.getMessage()
    assert "event=batch.succeeded" in record.getMessage()
    assert "request_id=r-7" in record.getMessage()


@pytest.mark.parametrize("sync", [True, False])
async def test_a_raising_handler_is_500_and_the_exception_is_logged(
    sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = make_receiver()

    def boom(context: CallbackContext) -> None:
        raise RuntimeError("database unavailable")

    async def aboom(context: CallbackContext) -> None:
        boom(context)

    receiver.on_any(boom if sync else aboom)
    body = batch_body(metadata={"customer": "confidential"})
    result = await post(receiver, body)
    assert result.status == 500
    assert result.json() == {"error": "handler_failed", "detail": FAILED.detail}
    assert "database unavailable" not in result.body.decode()
    [record] = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "outcome=failed" in record.getMessage()
    assert "confidential" not in record.getMessage()


async def test_cancellation_of_a_handler_is_not_swallowed() -> None:
    receiver = make_receiver()

    @receiver.on_any
    async def cancelled(context: CallbackContext) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await post(receiver, batch_body())


# --- the checks are those of the middleware -------------------------------------------------


async def test_rejections_never_reach_a_handler() -> None:
    receiver = make_receiver(max_body_bytes=2000)
    called: list[bool] = []

    @receiver.on_any
    async def handler(context: CallbackContext) -> None:
        called.append(True)

    body = batch_body()
    forged = await drive(receiver, chunks=[body], headers=[(b"runflow-signature", b"0" * 64)])
    method = await drive(receiver, chunks=[], headers=[], method="GET")
    big = batch_body(metadata={"pad": "x" * 3000})
    too_big = await drive(receiver, chunks=[big], headers=signed(big))
    not_object = await drive(receiver, chunks=[b"[]"], headers=signed(b"[]"))
    assert [r.status for r in (forged, method, too_big, not_object)] == [401, 405, 413, 400]
    assert method.headers["allow"] == "POST"
    assert called == []


async def test_behind_the_middleware_the_callback_is_read_once() -> None:
    receiver = make_receiver(secrets="whsec_not_the_one_used")  # the middleware's context wins
    seen: list[bytes] = []

    @receiver.on_any
    async def handler(context: CallbackContext) -> None:
        seen.append(context.body)

    app = CallbackMiddleware(receiver, secrets=SECRET, path="/")
    body = batch_body()
    result = await drive(app, chunks=[body], headers=signed(body), path="/")
    assert result.status == 200
    assert seen == [body]


async def test_the_receiver_acknowledges_lifespan_and_refuses_websockets() -> None:
    receiver = make_receiver()
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(receiver({"type": "lifespan"}, receive, send), 10)
    await receiver({"type": "websocket", "path": PATH, "headers": []}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


# --- registration errors --------------------------------------------------------------------


def test_registering_an_event_twice_is_an_error() -> None:
    receiver = make_receiver()
    receiver.on("batch.succeeded")(lambda context: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        receiver.on("batch.failed", "batch.succeeded")
    receiver.on_any(lambda context: None)
    with pytest.raises(ConfigurationError, match="on_any"):
        receiver.on_any(lambda context: None)


@pytest.mark.parametrize("event", ["", None, 3])
def test_event_names_must_be_non_empty_strings(event: Any) -> None:
    with pytest.raises(ConfigurationError, match="event name"):
        make_receiver().on(event)


def test_a_handler_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="handler"):
        make_receiver().on("run.failed")("not callable")  # type: ignore[type-var]


# --- the dispatch point, wrapped the way a store layer wraps it -----------------------------


async def test_process_is_the_single_dispatch_point_a_wrapper_can_own() -> None:
    seen_outcomes: list[Outcome] = []
    claimed: set[str | None] = set()

    class DedupingReceiver(CallbackReceiver):
        async def process(self, context: CallbackContext) -> Outcome:
            key = context.subject_id
            if key in claimed:
                return Outcome("duplicate", key)
            claimed.add(key)
            outcome = await super().process(context)
            seen_outcomes.append(outcome)
            if not outcome.ok:
                claimed.discard(key)
            return outcome

    receiver = DedupingReceiver(secrets=SECRET)
    runs: list[str | None] = []

    @receiver.on("batch.succeeded")
    async def handler(context: CallbackContext) -> None:
        runs.append(context.subject_id)

    first = await post(receiver, batch_body())
    second = await post(receiver, batch_body())
    assert first.json() == {"status": "processed"}
    assert second.status == 200
    assert second.json()["status"] == "duplicate"
    assert len(runs) == 1
    assert seen_outcomes == [PROCESSED]


async def test_process_returns_outcomes_instead_of_raising() -> None:
    receiver = make_receiver()
    error = ValueError("nope")

    @receiver.on("run.completed")
    def fails(context: CallbackContext) -> None:
        raise error

    contexts: dict[str, CallbackContext] = {}

    @receiver.on("batch.succeeded")
    async def capture(context: CallbackContext) -> None:
        contexts["batch"] = context

    await post(receiver, batch_body())
    batch = contexts["batch"]
    assert await receiver.process(batch) == PROCESSED
    run = await receiver.process(_with_event(batch, "run.completed"))
    assert (run.ok, run.http_status, run.error) == (False, 500, error)
    assert await receiver.process(_with_event(batch, "run.failed")) == UNHANDLED


def _with_event(context: CallbackContext, event: str) -> CallbackContext:
    import dataclasses

    payload = context.payload.model_copy(update={"event": event})
    return dataclasses.replace(context, payload=payload)


@pytest.mark.parametrize(
    ("outcome", "status", "body"),
    [
        (PROCESSED, 200, {"status": "processed"}),
        (UNHANDLED, 200, {"status": "unhandled"}),
        (
            Outcome("recorded"),
            200,
            {"status": "recorded", "detail": "recorded; it will be processed in the background"},
        ),
        (
            Outcome("in_progress"),
            409,
            {
                "error": "in_progress",
                "detail": "this callback is being processed right now; retry later",
            },
        ),
        (
            STORE_UNAVAILABLE,
            503,
            {
                "error": "store_unavailable",
                "detail": "the callback could not be recorded; Runflow will retry",
            },
        ),
    ],
)
async def test_every_outcome_a_process_override_returns_is_answered_from_the_one_table(
    outcome: Outcome, status: int, body: dict[str, str]
) -> None:
    class Fixed(CallbackReceiver):
        async def process(self, context: CallbackContext) -> Outcome:
            return outcome

    result = await post(Fixed(secrets=SECRET), batch_body())
    assert (result.status, result.json()) == (status, body)


# --- mounted in real apps under uvicorn -----------------------------------------------------


def test_mounted_as_a_starlette_route_under_uvicorn() -> None:
    receiver = make_receiver()
    events: list[str | None] = []

    @receiver.on_any
    def record(context: CallbackContext) -> None:
        events.append(context.event)

    app = Starlette(routes=[Route(PATH, receiver)])
    body = run_body()
    with serve_in_thread(app, log_config=None) as url:
        ok = httpx.post(url + PATH, content=body, headers={"Runflow-Signature": sign(body, SECRET)})
        forged = httpx.post(url + PATH, content=body, headers={"Runflow-Signature": "a" * 64})
        get = httpx.get(url + PATH)
    assert (ok.status_code, ok.json()) == (200, {"status": "processed"})
    assert forged.status_code == 401
    assert get.status_code == 405
    assert events == ["run.completed"]


def test_mounted_inside_a_fastapi_app_under_uvicorn() -> None:
    from fastapi import FastAPI

    receiver = make_receiver()
    events: list[str | None] = []

    @receiver.on("batch.succeeded")
    async def record(context: CallbackContext) -> None:
        events.append(context.event)

    app = FastAPI()
    app.routes.append(Route(PATH, receiver))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    body = batch_body()
    with serve_in_thread(app, log_config=None) as url:
        ok = httpx.post(url + PATH, content=body, headers={"Runflow-Signature": sign(body, SECRET)})
        health_answer = httpx.get(url + "/health")
    assert (ok.status_code, ok.json()) == (200, {"status": "processed"})
    assert health_answer.json() == {"ok": "yes"}
    assert events == ["batch.succeeded"]
