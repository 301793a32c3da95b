"""Code that must type-check under ``mypy --strict`` (tests/test_typing.py runs mypy on it).

It is also imported and run by tests/test_typing.py, so every line here is real, working
usage: nothing in it runs at import, and each builder returns a fresh receiver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import assert_never, assert_type

from runflow_callbacks import (
    AnyCallbackPayload,
    BatchCallbackPayload,
    BatchEvent,
    BatchStatus,
    CallbackContext,
    CallbackDelivery,
    CallbackReceiver,
    GenericCallbackPayload,
    KnownEvent,
    RunCallbackPayload,
    RunEvent,
    RunStatus,
    parse_callback,
)
from runflow_callbacks.handlers import Handler, HandlerTable

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from uuid import UUID

    from runflow_callbacks.stores import CallbackStore

SECRET = "whsec_typing_0123456789abcdef"


# --- parse_callback narrows ---------------------------------------------------------------


def describe(body: bytes) -> str:
    """``match`` over :func:`parse_callback` is exhaustive over three classes."""
    payload = parse_callback(body)
    assert_type(payload, AnyCallbackPayload)
    match payload:
        case BatchCallbackPayload():
            batch_id: UUID = payload.batch_id
            return f"batch {batch_id}"
        case RunCallbackPayload():
            run_id: UUID = payload.run_id
            return f"run {run_id}"
        case GenericCallbackPayload():
            return f"other {payload.event}"
        case _:
            assert_never(payload)


def describe_with_isinstance(payload: AnyCallbackPayload) -> str:
    if isinstance(payload, BatchCallbackPayload):
        return "batch"
    if isinstance(payload, RunCallbackPayload):
        return "run"
    if isinstance(payload, GenericCallbackPayload):
        return "other"
    assert_never(payload)


def describe_context(context: CallbackContext) -> str:
    """A bare ``CallbackContext`` holds any payload, and narrows the same way."""
    assert_type(context.payload, AnyCallbackPayload)
    match context.payload:
        case BatchCallbackPayload(batch_id=batch_id):
            return f"batch {batch_id}"
        case RunCallbackPayload(run_id=run_id):
            return f"run {run_id}"
        case GenericCallbackPayload() as other:
            return f"other {other.subject_id}"
        case unreachable:
            assert_never(unreachable)


def from_history(delivery: CallbackDelivery) -> str | None:
    payload = delivery.parse_payload()
    assert_type(payload, AnyCallbackPayload | None)
    return None if payload is None else describe_with_isinstance(payload)


# --- the Literal names ----------------------------------------------------------------------

FIRST_BATCH_EVENT: BatchEvent = "batch.succeeded"
FIRST_RUN_EVENT: RunEvent = "run.completed"
EITHER: tuple[KnownEvent, KnownEvent] = (FIRST_BATCH_EVENT, FIRST_RUN_EVENT)


def finished_well(status: BatchStatus | RunStatus) -> bool:
    return status in ("succeeded", "partial_succeeded")


def sent_status(payload: AnyCallbackPayload) -> str | None:
    # The field stays a str: Runflow may add statuses, and a new one must still parse.
    return payload.status


WELL: bool = finished_well("canceled") or finished_well("cancelled")


# --- handlers narrowed by event -------------------------------------------------------------


def build_receiver(seen: list[str], store: CallbackStore | None = None) -> CallbackReceiver:
    """A receiver with a handler of each shape; each appends what it saw to ``seen``."""
    receiver = CallbackReceiver(secrets=SECRET, store=store)

    @receiver.on("batch.succeeded", "batch.partial_succeeded")
    async def batch_done(context: CallbackContext[BatchCallbackPayload]) -> None:
        assert_type(context.payload, BatchCallbackPayload)
        output = context.payload.output
        seen.append(f"batch_done {context.payload.batch_id} {output and output.total}")

    @receiver.on("run.completed")
    def run_done(context: CallbackContext[RunCallbackPayload]) -> None:  # sync
        assert_type(context.payload, RunCallbackPayload)
        seen.append(f"run_done {context.payload.run_id}")

    # A handler of any payload serves a batch event too (parameters are contravariant).
    @receiver.on("batch.failed")
    def any_payload(context: CallbackContext) -> None:
        seen.append(f"any_payload {describe_context(context)}")

    # A mix of batch and run events: the handler takes the bare context.
    @receiver.on("run.failed", "batch.cancelled")
    async def mixed(context: CallbackContext) -> None:
        seen.append(f"mixed {describe_context(context)}")

    # An event this version does not know: registered on purpose, any payload.
    @receiver.on("batch.expired", allow_unknown=True)
    def future(context: CallbackContext) -> None:
        seen.append(f"future {describe_context(context)}")

    @receiver.on_batch
    async def any_batch(context: CallbackContext[BatchCallbackPayload]) -> None:
        seen.append(f"any_batch {context.event} {context.payload.batch_id}")

    @receiver.on_run
    def any_run(context: CallbackContext[RunCallbackPayload]) -> None:
        seen.append(f"any_run {context.event} {context.payload.run_id}")

    @receiver.on_any
    def everything_else(context: CallbackContext) -> None:
        seen.append(f"everything_else {describe_context(context)}")

    # The decorators hand the function back as it was, not as a wider Handler.
    kept_async: Callable[[CallbackContext[BatchCallbackPayload]], Coroutine[Any, Any, None]] = (
        batch_done
    )
    kept_sync: Callable[[CallbackContext[RunCallbackPayload]], None] = run_done
    assert kept_async is batch_done
    assert kept_sync is run_done
    return receiver


def build_receiver_with_bare_fallbacks(seen: list[str]) -> CallbackReceiver:
    """``on_batch``/``on_run`` accept handlers of any payload too; objects are handlers."""
    receiver = CallbackReceiver(secrets=SECRET)

    class Recorder:
        def __call__(self, context: CallbackContext[BatchCallbackPayload]) -> None:
            seen.append(f"recorder {context.payload.batch_id}")

    class AsyncRecorder:
        async def __call__(self, context: CallbackContext) -> None:
            seen.append(f"async_recorder {context.subject_id}")

    recorder = receiver.on("batch.succeeded")(Recorder())
    assert_type(recorder, Recorder)
    receiver.on_run(AsyncRecorder())
    contexts: list[CallbackContext] = []
    receiver.on_batch(contexts.append)  # a bound method of any payload
    return receiver


def build_table(seen: list[str], names: list[str]) -> HandlerTable:
    """The table behind the receiver types the same way; dynamic names say allow_unknown."""
    table = HandlerTable()

    def record(context: CallbackContext) -> None:
        seen.append(f"record {context.event}")

    for name in names:
        table.on(name, allow_unknown=False)(record)

    @table.on("run.partial_succeeded")
    async def partial(context: CallbackContext[RunCallbackPayload]) -> None:
        seen.append(f"partial {context.payload.run_id}")

    return table


# --- contexts are covariant -----------------------------------------------------------------


def takes_any(context: CallbackContext) -> str | None:
    return context.event


def forwards(context: CallbackContext[BatchCallbackPayload]) -> str | None:
    return takes_any(context)  # a batch context is a context


def widened() -> Handler[BatchCallbackPayload]:
    any_handler: Handler = takes_any
    return any_handler  # a handler of any payload is a handler of batch payloads


def typed_builder(table: HandlerTable) -> Callable[[CallbackContext[RunCallbackPayload]], None]:
    def handler(context: CallbackContext[RunCallbackPayload]) -> None: ...

    return table.on_run(handler)
