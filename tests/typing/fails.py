"""Code that must NOT type-check: each line marked ``# E: <code>`` is an error mypy must report.

tests/test_typing.py runs mypy on this file (excluded from the tree's own mypy run in
pyproject.toml) and expects exactly the marked lines with exactly those codes, no more, no
fewer. Nothing here runs at import: every case sits in a function that is never called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import assert_never

from runflow_callbacks import (
    AnyCallbackPayload,
    BatchCallbackPayload,
    BatchEvent,
    BatchStatus,
    CallbackContext,
    CallbackReceiver,
    RunCallbackPayload,
    RunEvent,
    parse_callback,
)

if TYPE_CHECKING:
    from runflow_callbacks.handlers import Handler, HandlerTable


def handlers_of_the_wrong_kind(receiver: CallbackReceiver) -> None:
    @receiver.on("batch.succeeded")  # E: type-var
    def run_handler_for_a_batch_event(context: CallbackContext[RunCallbackPayload]) -> None: ...

    @receiver.on("run.completed", "run.failed")  # E: type-var
    async def batch_handler_for_run_events(
        context: CallbackContext[BatchCallbackPayload],
    ) -> None: ...

    @receiver.on("batch.failed", "run.failed")  # E: type-var
    def batch_handler_for_a_mix(context: CallbackContext[BatchCallbackPayload]) -> None: ...

    @receiver.on_batch  # E: type-var
    def run_handler_for_every_batch(context: CallbackContext[RunCallbackPayload]) -> None: ...

    @receiver.on_run  # E: type-var
    async def batch_handler_for_every_run(
        context: CallbackContext[BatchCallbackPayload],
    ) -> None: ...

    @receiver.on_any  # E: type-var
    def batch_handler_for_anything(context: CallbackContext[BatchCallbackPayload]) -> None: ...

    @receiver.on("batch.expired", allow_unknown=True)  # E: type-var
    def batch_handler_for_an_unknown_event(
        context: CallbackContext[BatchCallbackPayload],
    ) -> None: ...


def the_table_checks_the_same(table: HandlerTable) -> None:
    @table.on("batch.cancelled")  # E: type-var
    def run_handler(context: CallbackContext[RunCallbackPayload]) -> None: ...

    def takes_an_int(value: int) -> None: ...

    table.on_any(takes_an_int)  # E: type-var


def names_this_version_does_not_know(receiver: CallbackReceiver, name: str) -> None:
    receiver.on("batch.succeded")  # E: call-overload
    receiver.on(name)  # E: call-overload
    receiver.on("run.completed", name)  # E: call-overload
    event: BatchEvent = "run.completed"  # E: assignment
    other: RunEvent = "run.finished"  # E: assignment
    status: BatchStatus = "done"  # E: assignment
    del event, other, status


def payloads_must_be_narrowed(body: bytes, context: CallbackContext) -> None:
    payload = parse_callback(body)
    print(payload.batch_id)  # E: union-attr
    print(context.payload.run_id)  # E: union-attr
    batch: BatchCallbackPayload = payload  # E: assignment
    del batch


def a_match_that_forgets_a_case(payload: AnyCallbackPayload) -> str:
    match payload:
        case BatchCallbackPayload():
            return "batch"
        case RunCallbackPayload():
            return "run"
        case _:
            assert_never(payload)  # E: arg-type


def contexts_are_covariant_only_upwards(
    any_context: CallbackContext, run_context: CallbackContext[RunCallbackPayload]
) -> None:
    def batch_only(context: CallbackContext[BatchCallbackPayload]) -> None: ...

    batch_only(any_context)  # E: arg-type
    batch_only(run_context)  # E: arg-type

    def not_a_payload(context: CallbackContext[int]) -> None: ...  # E: type-var


def handlers_are_contravariant(batch: Handler[BatchCallbackPayload]) -> Handler:
    return batch  # E: return-value
