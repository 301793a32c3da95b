"""Batch items built on first use: a parsed batch behaves exactly like one validated eagerly."""

from __future__ import annotations

import copy
import json
import pickle
import threading
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_callbacks.errors import InvalidPayloadError
from runflow_callbacks.models import (
    BATCH_EVENTS,
    BatchCallbackPayload,
    BatchOutput,
    CallbackPayload,
    RunCallbackPayload,
    parse_callback,
)

if TYPE_CHECKING:
    from collections.abc import Callable

BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
RUN_ID = "0190f2a4-0000-7000-8000-000000000001"

_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_counts = st.none() | st.integers(0, 10_000)
_outputs = st.fixed_dictionaries(
    {},
    optional={
        "items": st.none() | st.lists(st.dictionaries(st.text(max_size=8), _json), max_size=5),
        "succeeded": _counts,
        "failed": _counts,
        "cancelled": _counts,
        "total": _counts,
        "region": st.text(max_size=8),  # a field this version does not know
    },
)
_batches = st.fixed_dictionaries(
    {"event": st.sampled_from(BATCH_EVENTS), "batch_id": st.just(BATCH_ID)},
    optional={
        "status": st.sampled_from(["succeeded", "failed", "partial_succeeded", "cancelled"]),
        "output": st.none() | _outputs,
        "duration_ms": st.integers(0, 10**9),
        "created_at": st.just("2026-05-06T10:00:00+00:00"),
        "completed_at": st.just("2026-05-06T10:00:01.5+00:00"),
        "metadata": _json,
        "attempt_hint": _json,  # an unknown top-level field
    },
)


def _eager(body: bytes) -> BatchCallbackPayload:
    return BatchCallbackPayload.model_validate(json.loads(body))


def _deferred_body(output: BatchOutput) -> bytes | None:
    """The body a deferred output still holds (None once its items are built)."""
    private = output.__pydantic_private__
    body: bytes | None = None if private is None else private["_deferred_body"]
    return body


def _batch_body(**output: Any) -> bytes:
    items = [{"run_id": RUN_ID, "status": "succeeded", "output": {"url": "u"}, "error": None}]
    fields = {"items": items, "succeeded": 1, "failed": 0, "cancelled": 0, "total": 1, **output}
    return json.dumps(
        {"event": "batch.succeeded", "batch_id": BATCH_ID, "status": "succeeded", "output": fields}
    ).encode()


def _parsed_output(body: bytes) -> BatchOutput:
    payload = parse_callback(body)
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.output is not None
    return payload.output


@settings(max_examples=300, deadline=None)
@given(_batches)
def test_a_deferred_batch_is_indistinguishable_from_an_eager_one(data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    eager = _eager(body)
    views: list[Callable[[CallbackPayload], object]] = [
        type,
        lambda payload: payload.model_dump(),
        lambda payload: payload.model_dump(exclude_unset=True),
        lambda payload: payload.model_dump_json(),
        repr,
        lambda payload: payload.model_fields_set,
        lambda payload: payload.model_extra,
        lambda payload: payload.output and type(payload.output),
        lambda payload: payload.output and payload.output.items,
        lambda payload: payload.output and payload.output.model_extra,
        lambda payload: payload.output and payload.output.model_fields_set,
        lambda payload: pickle.loads(pickle.dumps(payload)).model_dump(),  # noqa: S301
    ]
    for view in views:  # each view first, on a fresh parse: any of them may be the first use
        assert view(parse_callback(body)) == view(eager)
    assert parse_callback(body) == eager
    assert eager == parse_callback(body)


def test_items_stay_in_the_body_until_first_use() -> None:
    body = _batch_body()
    output = _parsed_output(body)
    assert _deferred_body(output) == body
    assert (output.succeeded, output.total) == (1, 1)  # the counts are there at once
    assert _deferred_body(output) == body
    assert output.items == [
        {"run_id": RUN_ID, "status": "succeeded", "output": {"url": "u"}, "error": None}
    ]
    assert _deferred_body(output) is None  # built once, the body let go


FIRST_USES: dict[str, Callable[[BatchOutput], object]] = {
    "items": lambda output: output.items,
    "an unknown field": lambda output: output.region,  # type: ignore[attr-defined]
    "model_extra": lambda output: output.model_extra,
    "model_fields_set": lambda output: output.model_fields_set,
    "equality": lambda output: output == BatchOutput(),
    "iteration": dict,
    "repr": repr,
    "str": str,
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "model_copy": lambda output: output.model_copy(update={"total": 5}),
    "pickle": pickle.dumps,
    "model_dump": lambda output: output.model_dump(),
    "model_dump_json": lambda output: output.model_dump_json(),
    "assignment": lambda output: setattr(output, "total", 5),
    "deletion": lambda output: delattr(output, "total"),
}


@pytest.mark.parametrize("use", FIRST_USES.values(), ids=FIRST_USES.keys())
def test_every_first_use_builds_the_items(use: Callable[[BatchOutput], object]) -> None:
    output = _parsed_output(_batch_body(region="eu"))
    use(output)
    assert _deferred_body(output) is None
    assert "items" in output.__dict__
    assert output.model_extra == {"region": "eu"}


def test_assigning_items_first_keeps_the_other_fields() -> None:
    output = _parsed_output(_batch_body(region="eu"))
    output.items = []
    assert output.items == []
    assert output.model_extra == {"region": "eu"}
    assert output.model_dump() == {
        "items": [],
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "total": 1,
        "region": "eu",
    }


def test_the_serialized_field_order_is_the_eager_order() -> None:
    body = _batch_body(region="eu")
    output = _parsed_output(body)
    _ = output.total
    assert output.model_dump_json() == _eager(body).output.model_dump_json()  # type: ignore[union-attr]
    assert list(output.model_dump()) == [
        "items",
        "succeeded",
        "failed",
        "cancelled",
        "total",
        "region",
    ]


def test_threads_reading_items_at_once_see_the_same_items() -> None:
    output = _parsed_output(_batch_body())
    seen: list[object] = []
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        seen.append(output.items)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4
    assert all(items == seen[0] for items in seen)


@pytest.mark.parametrize(
    "items",
    [[1, "two", None], [[]], "not a list", 7],
    ids=["scalars", "nested list", "string", "number"],
)
def test_items_of_another_shape_take_the_eager_path(items: object) -> None:
    body = _batch_body(items=items)
    if isinstance(items, list):
        output = _parsed_output(body)
        assert output.items == items
        assert _deferred_body(output) is None
    else:
        with pytest.raises(InvalidPayloadError, match=r"at output\.items"):
            parse_callback(body)


@pytest.mark.parametrize(
    "body",
    [
        # ``event`` not first: still a batch, validated eagerly.
        b'{"batch_id": "%s", "event": "batch.succeeded", "output": {"items": [{}]}}'
        % BATCH_ID.encode(),
        # The older shape without ``event``.
        json.dumps({"batch_id": BATCH_ID, "output": {"items": [{}]}}).encode(),
        # An escaped lone surrogate, which only Python's json reads.
        _batch_body(region="\udcff"),
    ],
    ids=["event-not-first", "no-event", "lone-surrogate"],
)
def test_other_batch_bodies_parse_as_before(body: bytes) -> None:
    output = _parsed_output(body)
    assert _deferred_body(output) is None
    assert output == _eager(body).output
    assert output.items is not None


def test_a_later_duplicate_event_decides_the_model() -> None:
    # JSON's last duplicate key wins; the fast path must not trust the first one.
    body = b'{"event": "batch.succeeded", "run_id": "%s", "event": "run.completed"}' % (
        RUN_ID.encode()
    )
    assert type(parse_callback(body)) is RunCallbackPayload


def test_run_callbacks_are_not_deferred() -> None:
    body = json.dumps({"event": "run.completed", "run_id": RUN_ID, "output": {"a": [1]}}).encode()
    payload = parse_callback(body)
    assert isinstance(payload, RunCallbackPayload)
    assert payload.output == {"a": [1]}


def test_the_json_schema_describes_the_fields_when_serializing_too() -> None:
    # What FastAPI shows for a response model: the fields, not an unconstrained "any".
    schema = BatchCallbackPayload.model_json_schema(mode="serialization")
    assert schema == BatchCallbackPayload.model_json_schema(mode="validation")
    assert set(schema["$defs"]["BatchOutput"]["properties"]) == set(BatchOutput.model_fields)


def test_defer_items_false_builds_everything_at_once() -> None:
    body = _batch_body(region="eu")
    payload = parse_callback(body, defer_items=False)
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.output is not None
    assert _deferred_body(payload.output) is None
    assert "items" in payload.output.__dict__
    assert payload == parse_callback(body)


def test_a_duplicated_output_reads_the_same_before_and_after_the_items() -> None:
    # Both parsers keep the last of duplicated keys, so the counts read before the items are
    # built are the ones the built output has.
    body = (
        b'{"event": "batch.succeeded", "batch_id": "%s", '
        b'"output": {"items": [{"a": 1}], "total": 1}, '
        b'"output": {"items": [{"b": 2}], "total": 2}}' % BATCH_ID.encode()
    )
    output = _parsed_output(body)
    assert _deferred_body(output) == body
    assert output.total == 2
    assert output.items == [{"b": 2}]
    assert output.total == 2
    assert output == _eager(body).output
