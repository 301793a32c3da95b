"""Batch items and run outputs built on first use: a deferred payload is an eager one.

``parse_callback(body, defer_items=False)`` is the eager path (parse into Python objects, then
validate), and the reference for every answer here: the same payload, or the same error.
"""

from __future__ import annotations

import copy
import json
import pickle
import threading
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_callbacks import _deferred
from runflow_callbacks._deferred import deferred_raw
from runflow_callbacks.errors import InvalidPayloadError
from runflow_callbacks.models import (
    BATCH_EVENTS,
    RUN_EVENTS,
    BatchCallbackPayload,
    BatchOutput,
    CallbackPayload,
    GenericCallbackPayload,
    RunCallbackPayload,
    parse_callback,
)

if TYPE_CHECKING:
    from collections.abc import Callable

BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
RUN_ID = "0190f2a4-0000-7000-8000-000000000001"
PAD = "p" * 3000  # makes a body large enough to be skimmed

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_counts = st.none() | st.integers(0, 10_000)
_outputs = st.fixed_dictionaries(
    {},
    optional={
        "items": st.none() | st.lists(_json, max_size=5),
        "succeeded": _counts,
        "failed": _counts,
        "cancelled": _counts,
        "total": _counts,
        "region": st.text(max_size=8),  # a field this version does not know
    },
)
_envelope = {
    "status": st.sampled_from(["succeeded", "failed", "partial_succeeded", "cancelled"]),
    "duration_ms": st.integers(0, 10**9),
    "created_at": st.just("2026-05-06T10:00:00+00:00"),
    "completed_at": st.just("2026-05-06T10:00:01.5+00:00"),
    "metadata": _json,
    "attempt_hint": _json,  # an unknown top-level field
}
_batches = st.fixed_dictionaries(
    {"event": st.sampled_from(BATCH_EVENTS), "batch_id": st.just(BATCH_ID)},
    optional={**_envelope, "output": st.none() | _outputs},
)
_runs = st.fixed_dictionaries(
    {"event": st.sampled_from(RUN_EVENTS), "run_id": st.just(RUN_ID)},
    optional={**_envelope, "output": _json},
)
# Where the filler goes: nowhere (a small body), after everything (an unknown field), or into
# the deferred field itself.
_padding = st.sampled_from(["none", "field", "inside"])


def _eager(body: bytes) -> CallbackPayload:
    return parse_callback(body, defer_items=False)


def _write(data: dict[str, Any], padding: str) -> bytes:
    """The body Runflow would write (``event`` first, a batch's ``items`` first), padded."""
    data = dict(data)
    output = data.get("output")
    batch = "batch_id" in data
    if padding == "inside" and not batch and isinstance(output, dict):
        data["output"] = [output, PAD]
    elif padding == "inside" and isinstance(output, dict) and isinstance(output.get("items"), list):
        output = data["output"] = {**output, "items": [*output["items"], PAD]}
    elif padding == "inside" and not batch and isinstance(output, list):
        data["output"] = [*output, PAD]
    elif padding != "none":
        data["zz_padding"] = PAD
    if batch and isinstance(output, dict) and "items" in output:
        data["output"] = {"items": output["items"], **output}
    ordered = {"event": data.pop("event")}
    for name in ("batch_id", "run_id", "status", "output"):
        if name in data:
            ordered[name] = data.pop(name)
    return json.dumps({**ordered, **data}).encode()


def _deferred_holder(payload: CallbackPayload) -> BatchOutput | RunCallbackPayload | None:
    if isinstance(payload, BatchCallbackPayload):
        return payload.output
    return payload if isinstance(payload, RunCallbackPayload) else None


def _is_deferred(payload: CallbackPayload) -> bool:
    holder = _deferred_holder(payload)
    return holder is not None and deferred_raw(holder) is not None


VIEWS: dict[str, Callable[[CallbackPayload], object]] = {
    "type": type,
    "equality": lambda payload: payload,
    "model_dump": lambda payload: payload.model_dump(),
    "model_dump unset": lambda payload: payload.model_dump(exclude_unset=True),
    "model_dump json mode": lambda payload: payload.model_dump(mode="json"),
    "model_dump_json": lambda payload: payload.model_dump_json(),
    "repr": repr,
    "str": str,
    "fields set": lambda payload: payload.model_fields_set,
    "extras": lambda payload: payload.model_extra,
    "iteration": list,
    "output": lambda payload: payload.output,
    "output type": lambda payload: type(payload.output),
    "output fields": lambda payload: (
        (
            payload.output.items,
            payload.output.model_extra,
            payload.output.model_fields_set,
            repr(payload.output),
        )
        if isinstance(payload.output, BatchOutput)
        else None
    ),
    "pickle": lambda payload: pickle.loads(pickle.dumps(payload)),  # noqa: S301
    "copy": lambda payload: copy.copy(payload).model_dump(),
    "deepcopy": copy.deepcopy,
    "model_copy": lambda payload: payload.model_copy(update={"status": "x"}).model_dump(),
}


def _assert_indistinguishable(body: bytes) -> None:
    eager = _eager(body)
    for name, view in VIEWS.items():  # each view first, on a fresh parse: any may be first use
        assert view(parse_callback(body)) == view(eager), name
    assert parse_callback(body) == eager
    assert eager == parse_callback(body)


@settings(max_examples=300, deadline=None)
@given(_batches, _padding)
def test_a_deferred_batch_is_indistinguishable_from_an_eager_one(
    data: dict[str, Any], padding: str
) -> None:
    body = _write(data, padding)
    _assert_indistinguishable(body)
    output = data.get("output")
    if padding != "none" and isinstance(output, dict) and isinstance(output.get("items"), list):
        assert _is_deferred(parse_callback(body))  # the property is about the deferred path


@settings(max_examples=300, deadline=None)
@given(_runs, _padding)
def test_a_deferred_run_output_is_indistinguishable_from_an_eager_one(
    data: dict[str, Any], padding: str
) -> None:
    body = _write(data, padding)
    _assert_indistinguishable(body)
    if padding != "none" and isinstance(data.get("output"), (dict, list)):
        assert _is_deferred(parse_callback(body))


# --- what is built when --------------------------------------------------------------------

ITEMS = [
    {"run_id": RUN_ID, "status": "succeeded", "output": {"url": "u"}, "error": None},
    {"run_id": RUN_ID, "status": "failed", "output": None, "error": {"code": "timeout"}},
]


def _batch_body(*, items: object = ITEMS, **output: Any) -> bytes:
    fields = {"items": items, "succeeded": 1, "failed": 1, "cancelled": 0, "total": 2, **output}
    return json.dumps(
        {
            "event": "batch.partial_succeeded",
            "batch_id": BATCH_ID,
            "status": "partial_succeeded",
            "output": fields,
            "metadata": {"pad": PAD},
        }
    ).encode()


def _run_body(output: object = None, **fields: Any) -> bytes:
    if output is None:
        output = {"model": "m", "segments": [{"id": i, "text": "hi"} for i in range(200)]}
    return json.dumps(
        {"event": "run.completed", "run_id": RUN_ID, "status": "succeeded", "output": output}
        | fields
    ).encode()


def _parsed_output(body: bytes) -> BatchOutput:
    payload = parse_callback(body)
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.output is not None
    return payload.output


def _parsed_run(body: bytes) -> RunCallbackPayload:
    payload = parse_callback(body)
    assert isinstance(payload, RunCallbackPayload)
    return payload


def test_items_stay_in_the_body_until_first_use() -> None:
    body = _batch_body(region="eu")
    output = _parsed_output(body)
    raw = json.dumps(ITEMS).encode()
    assert deferred_raw(output) == raw
    # The counts, unknown fields and what was set are there at once, and build nothing.
    assert (output.succeeded, output.total) == (1, 2)
    assert output.region == "eu"  # type: ignore[attr-defined]
    assert output.model_extra == {"region": "eu"}
    assert output.model_fields_set == {
        "items",
        "succeeded",
        "failed",
        "cancelled",
        "total",
        "region",
    }
    assert deferred_raw(output) == raw
    assert output.items == ITEMS
    assert deferred_raw(output) is None  # built once, the bytes let go


def test_a_run_output_stays_in_the_body_until_first_use() -> None:
    body = _run_body(metadata={"order": 42}, attempt=2)
    payload = _parsed_run(body)
    assert deferred_raw(payload) is not None
    assert (payload.event, payload.metadata, payload.model_extra) == (
        "run.completed",
        {"order": 42},
        {"attempt": 2},
    )
    assert "output" in payload.model_fields_set
    assert deferred_raw(payload) is not None
    assert payload.output == _eager(body).output
    assert deferred_raw(payload) is None


FIRST_USES: dict[str, Callable[[Any], object]] = {
    "the field": lambda model: model.items if isinstance(model, BatchOutput) else model.output,
    "hasattr": lambda model: hasattr(
        model, "items" if isinstance(model, BatchOutput) else "output"
    ),
    "equality": lambda model: model == BatchOutput(),
    "iteration": dict,
    "repr": repr,
    "str": str,
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "model_copy": lambda model: model.model_copy(update={"status": "x"}),
    "pickle": pickle.dumps,
    "model_dump": lambda model: model.model_dump(),
    "model_dump_json": lambda model: model.model_dump_json(),
    "assignment": lambda model: setattr(model, "status", "x"),
    "deletion": lambda model: delattr(model, "metadata"),
}


def _deferred_models() -> dict[str, Callable[[], BatchOutput | RunCallbackPayload]]:
    return {
        "batch": lambda: _parsed_output(_batch_body(region="eu", status="x", metadata=None)),
        "run": lambda: _parsed_run(_run_body(metadata={"order": 42})),
    }


@pytest.mark.parametrize("kind", ["batch", "run"])
@pytest.mark.parametrize("use", FIRST_USES.values(), ids=FIRST_USES.keys())
def test_every_first_use_builds_the_field(kind: str, use: Callable[[Any], object]) -> None:
    model = _deferred_models()[kind]()
    assert deferred_raw(model) is not None
    use(model)
    assert deferred_raw(model) is None
    assert ("items" if kind == "batch" else "output") in model.__dict__


def test_assigning_the_field_first_keeps_the_others() -> None:
    output = _parsed_output(_batch_body(region="eu"))
    output.items = []
    assert output.items == []
    assert output.model_dump() == {
        "items": [],
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "total": 2,
        "region": "eu",
    }
    payload = _parsed_run(_run_body())
    payload.output = None
    assert payload.output is None
    assert payload.model_dump()["run_id"].hex == RUN_ID.replace("-", "")


def test_the_built_field_order_is_the_declared_order() -> None:
    output = _parsed_output(_batch_body(region="eu"))
    _ = output.items
    assert list(output.__dict__) == list(BatchOutput.model_fields)
    payload = _parsed_run(_run_body())
    _ = payload.output
    assert list(payload.__dict__) == list(RunCallbackPayload.model_fields)


@pytest.mark.parametrize("kind", ["batch", "run"])
def test_threads_building_at_once_see_the_same_value(kind: str) -> None:
    model = _deferred_models()[kind]()
    seen: list[object] = []
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        seen.append(model.items if isinstance(model, BatchOutput) else model.output)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4
    assert all(value is seen[0] for value in seen)


def test_the_pydantic_behaviours_deferral_relies_on() -> None:
    # Named in runflow_callbacks/_deferred.py: if a pydantic release changes one of these,
    # this fails before anything else does.
    for model in (BatchOutput.model_validate({"total": 1}), _eager(_run_body())):
        # 1. field values live in the instance __dict__, and a missing one reaches __getattr__;
        assert set(model.__dict__) == set(type(model).model_fields)
        # 2. __pydantic_private__ is None on a model without private attributes.
        assert model.__pydantic_private__ is None
        assert not type(model).__private_attributes__
    payload = parse_callback(_batch_body())
    assert type(payload) is BatchCallbackPayload
    assert type(payload.output) is BatchOutput  # made by the public classes' own validators
    # pydantic reads __pydantic_private__ in __eq__: a built model compares equal to an eager one.
    assert payload == _eager(_batch_body())


@pytest.mark.parametrize("model", [BatchCallbackPayload, RunCallbackPayload])
def test_the_json_schema_describes_the_fields_when_serializing_too(
    model: type[CallbackPayload],
) -> None:
    # What FastAPI shows for a response model: the fields, not an unconstrained "any".
    schema = model.model_json_schema(mode="serialization")
    assert schema == model.model_json_schema(mode="validation")
    if model is BatchCallbackPayload:
        assert set(schema["$defs"]["BatchOutput"]["properties"]) == set(BatchOutput.model_fields)
    else:
        assert set(schema["properties"]) == set(RunCallbackPayload.model_fields)


def test_defer_items_false_builds_everything_at_once() -> None:
    for body in (_batch_body(region="eu"), _run_body()):
        payload = parse_callback(body, defer_items=False)
        assert not _is_deferred(payload)
        assert payload == parse_callback(body)


def test_small_bodies_are_built_at_once() -> None:
    # Up to a few KiB, validating everything from the JSON costs less than skimming.
    small = json.dumps(
        {"event": "batch.succeeded", "batch_id": BATCH_ID, "output": {"items": ITEMS}}
    ).encode()
    payload = parse_callback(small)
    assert not _is_deferred(payload)
    assert payload == _eager(small)


# --- every body the skim does not take is parsed eagerly, with the eager answer ------------


def _answer(body: bytes, *, defer_items: bool) -> CallbackPayload | InvalidPayloadError:
    try:
        return parse_callback(body, defer_items=defer_items)
    except InvalidPayloadError as exc:
        return exc


def _same_answer(body: bytes) -> CallbackPayload | None:
    """Parse both ways; assert the same payload or the same error; return the deferred one."""
    # Both from the same stack depth: how deep a nesting json.loads reads depends on it.
    eager = _answer(body, defer_items=False)
    deferred = _answer(body, defer_items=True)
    if isinstance(eager, InvalidPayloadError):
        assert isinstance(deferred, InvalidPayloadError)
        assert (str(deferred), deferred.errors) == (str(eager), eager.errors)
        return None
    assert isinstance(deferred, CallbackPayload)
    assert deferred.model_fields_set == eager.model_fields_set
    assert _outcome(lambda: deferred) == _outcome(lambda: eager)  # repr: NaN != NaN
    return parse_callback(body)


def _with_items_text(text: bytes) -> bytes:
    return _batch_body(items=["<>"]).replace(b'["<>"]', text)


def _with_output_text(text: bytes) -> bytes:
    return _run_body(output="<>", metadata={"pad": PAD}).replace(b'"<>"', text)


FALLBACKS: dict[str, bytes] = {
    # msgspec does not check UTF-8 inside what it skips: only ASCII bodies are skimmed.
    "invalid UTF-8 in items": _with_items_text(b'[{"name": "\xff\xfe"}]'),
    "invalid UTF-8 in an output": _with_output_text(b'{"name": "\xc3("}'),
    "valid UTF-8, not ASCII": _with_items_text('[{"name": "Zoë"}]'.encode()),
    # msgspec refuses what Python's json (and pydantic-core) read.
    "NaN in items": _with_items_text(b'[{"score": NaN}]'),
    "Infinity in an output": _with_output_text(b'{"score": -Infinity}'),
    "lone surrogate in items": _with_items_text(b'[{"name": "\\udcff"}]'),
    "lone surrogate in an output": _with_output_text(b'{"name": "\\ud800"}'),
    # Duplicate keys: JSON's last one wins, and the bytes found must be the ones it keeps.
    "duplicate items, misaligned": _batch_body(items=[1]).replace(
        b', "succeeded": 1', b', "total": 5, "items": [2, 3, 4, 5, 6], "succeeded": 1'
    ),
    "duplicate items, same bytes": _batch_body(items=[1]).replace(
        b', "succeeded": 1', b', "items": [1], "succeeded": 1'
    ),
    "duplicate output": _batch_body().replace(
        b', "metadata"', b', "output": {"items": [{"b": 2}], "total": 3}, "metadata"'
    ),
    "duplicate output, null": _batch_body().replace(
        b', "metadata"', b', "output": null, "metadata"'
    ),
    "duplicate run output": _run_body().replace(
        b', "output"', b', "output": {"a": 1}, "output"', 1
    ),
    "a later event of another kind": _batch_body().replace(
        b', "metadata"', b', "event": "run.completed", "run_id": "%s", "metadata"' % RUN_ID.encode()
    ),
    "a later unknown event": _run_body().replace(b"}}", b'}, "event": "run.archived"}', 1),
    "a later event that is not a string": _batch_body()[:-1] + b', "event": 7}',
    # Unknown fields are validated with the envelope (and kept), not skipped.
    "unknown fields": _batch_body(region="eu", pages=[1, 2])[:-1] + b', "priority": "high"}',
    # Bodies not written the way Runflow writes them.
    "compact separators": json.dumps(json.loads(_batch_body()), separators=(",", ":")).encode(),
    "event not first": json.dumps(
        {"batch_id": BATCH_ID, **json.loads(_batch_body()), "event": "batch.succeeded"}
    ).encode(),
    "output not after status": _run_body().replace(b'"status": "succeeded", ', b"", 1)[:-1]
    + b', "status": "succeeded"}',
    "items not first": _batch_body().replace(b'{"items": ', b'{"total": 2, "items": ', 1),
    "whitespace": _batch_body().replace(b'"output": {', b'"output":  {', 1),
    "scalar run output": _with_output_text(b'"a long string output"'),
    "null run output": _with_output_text(b"null"),
    "no items": _batch_body().replace(b'"items": ', b'"things": ', 1),
    "null items": _with_items_text(b"null"),
    "a list as output": _batch_body()
    .replace(b'"output": {"items": ', b'"output": [{"items": ', 1)
    .replace(b', "metadata"', b'], "metadata"', 1)
    .replace(b'"total": 2}', b'"total": 2}', 1),
    # Malformed bodies: the same 400.
    "truncated": _batch_body()[:-1],
    "trailing data": _batch_body() + b" {}",
    "invalid escape in items": _with_items_text(b'["\\x"]'),
    "control character in an output": _with_output_text(b'{"a": "\x01"}'),
    "trailing comma in items": _with_items_text(b"[1, 2,]"),
    "items not a list": _with_items_text(b'"many"'),
    "items an object": _with_items_text(b'{"a": 1}'),
    "invalid count": _batch_body(succeeded="three"),
    "invalid batch_id": _batch_body().replace(BATCH_ID.encode(), b"batch_1", 1),
    "invalid run_id": _run_body().replace(RUN_ID.encode(), b"run_1", 1),
    "naive datetime": _run_body(created_at="2026-05-06T10:00:00"),
    "too deep for pydantic-core": _with_items_text(b"[" * 300 + b"]" * 300),
    "too deep for anyone": _with_output_text(b"[" * 5000 + b"]" * 5000),
}


@pytest.mark.parametrize("body", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_bodies_the_skim_does_not_take_get_the_eager_answer(body: bytes) -> None:
    assert len(body) > 2048
    payload = _same_answer(body)
    if payload is not None:
        _assert_same_after_building(payload, body)


def _outcome(call: Callable[[], object]) -> object:
    try:
        return repr(call())
    except ValueError as exc:  # e.g. a lone surrogate cannot be written as UTF-8 JSON
        return type(exc)


def _assert_same_after_building(payload: CallbackPayload, body: bytes) -> None:
    eager = _eager(body)
    assert _outcome(payload.model_dump) == _outcome(eager.model_dump)
    assert _outcome(payload.model_dump_json) == _outcome(eager.model_dump_json)


@pytest.mark.parametrize(
    "name", ["unknown fields", "duplicate items, same bytes", "duplicate items, misaligned"]
)
def test_what_the_skim_can_take_it_takes(name: str) -> None:
    payload = parse_callback(FALLBACKS[name])
    assert _is_deferred(payload) is (name != "duplicate items, misaligned")
    _assert_same_after_building(payload, FALLBACKS[name])


def test_a_duplicate_output_reads_the_same_before_and_after_the_items() -> None:
    body = _batch_body().replace(
        b', "metadata"', b', "output": {"items": [{"b": 2}], "total": 3}, "metadata"'
    )
    output = _parsed_output(body)
    eager = _eager(body)
    assert isinstance(eager, BatchCallbackPayload)
    assert output.total == 3
    assert output.items == [{"b": 2}]
    assert output == eager.output


@pytest.mark.parametrize("kind", ["batch", "run"])
def test_nesting_at_the_recursion_limit(kind: str) -> None:
    # msgspec and json.loads both count nesting against Python's recursion limit; the skim
    # must never accept a body nested deeper than the eager path accepts at the same place.
    def body(depth: int) -> bytes:
        nested = b"[" * depth + b"]" * depth
        return (
            _with_items_text(b"[" + nested + b"]") if kind == "batch" else _with_output_text(nested)
        )

    def eager_accepts(depth: int) -> bool:
        try:
            _eager(body(depth))
        except InvalidPayloadError:
            return False
        return True

    low, high = 200, 5000  # eager accepts low, refuses high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if eager_accepts(middle) else (low, middle)
    for depth in range(low - 8, high + 8):
        eager = _answer(body(depth), defer_items=False)
        deferred = _answer(body(depth), defer_items=True)
        assert type(deferred) is type(eager)  # too deep to compare values at this stack
        if isinstance(eager, InvalidPayloadError):
            assert str(deferred) == str(eager)


def test_a_deep_field_built_from_a_deeper_stack() -> None:
    # A body nested beyond pydantic-core's limit is read by json.loads, whose own limit
    # depends on the stack; built from deeper than it was parsed, it is read on a fresh one.
    depth = 900
    body = _with_output_text(b"[" * depth + b"]" * depth)
    payload = _parsed_run(body)
    assert _is_deferred(payload)

    def from_deep(levels: int) -> object:
        return from_deep(levels - 1) if levels else payload.output

    assert from_deep(150) == _eager(body).output


def test_the_skim_finds_the_bytes_json_keeps() -> None:
    # The placeholder and the bytes the model keeps, for a body as Runflow writes it.
    body = _batch_body()
    split = _deferred.skim_batch(body)
    assert split is not None
    envelope, raw = split
    assert bytes(raw) == json.dumps(ITEMS).encode()
    assert envelope == body.replace(json.dumps(ITEMS).encode(), b"[]")
    split = _deferred.skim_run(_run_body())
    assert split is not None
    assert b'"output": null' in split[0]


def test_an_unknown_event_is_generic() -> None:
    body = _run_body().replace(b'"run.completed"', b'"run.archived"')
    assert type(parse_callback(body)) is GenericCallbackPayload
    assert parse_callback(body) == _eager(body)
