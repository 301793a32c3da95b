"""Types that narrow: mypy on tests/typing/, and the registration rules behind the types.

``tests/typing/passes.py`` must type-check under the project's strict configuration;
``tests/typing/fails.py`` must report exactly the errors its ``# E: <code>`` comments announce
(so neither check can pass vacuously). Both run in one mypy call. The rest runs the same
shapes at runtime: the typed receiver of ``passes.py`` dispatching real callbacks, typos
refused at registration, ``on_batch``/``on_run`` as kind-level fallbacks, and ``match`` with
``assert_never`` over every shape :func:`parse_callback` produces.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mypy import api as mypy_api

from asgi_driver import BATCH_ID, RUN_ID, batch_body, drive, run_body, signed
from runflow_callbacks import (
    AnyCallbackPayload,
    BatchCallbackPayload,
    BatchEvent,
    BatchStatus,
    CallbackContext,
    CallbackReceiver,
    ConfigurationError,
    GenericCallbackPayload,
    KnownEvent,
    RunCallbackPayload,
    RunEvent,
    RunStatus,
    parse_callback,
)
from runflow_callbacks._events import BATCH_EVENTS, EVENTS, RUN_EVENTS
from runflow_callbacks.handlers import HandlerTable
from runflow_callbacks.stores import open_store
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
PASSES = TYPING / "passes.py"
FAILS = TYPING / "fails.py"
_ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?:\d+:)? error: .*\[(?P<code>[a-z-]+)\]$")
_EXPECTED = re.compile(r"#\s*E:\s*(?P<codes>[a-z-]+(?:\s*,\s*[a-z-]+)*)\s*$")


# --- mypy -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mypy_errors() -> dict[Path, set[tuple[int, str]]]:
    """``{file: {(line, code)}}`` of one strict mypy run over both files, with the project's
    configuration. Errors in other files (imported modules) are left out."""
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--hide-error-context",
            str(PASSES),
            str(FAILS),
        ]
    )
    assert status in (0, 1), f"mypy did not run (exit {status}):\n{stderr}{stdout}"
    found: dict[Path, set[tuple[int, str]]] = {PASSES: set(), FAILS: set()}
    for line in stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            path = Path(match["path"]).resolve()
            if path in found:
                found[path].add((int(match["line"]), match["code"]))
    return found


def expected_errors(path: Path) -> set[tuple[int, str]]:
    """The ``# E: code[, code]`` comments of ``path`` (comments only, not strings)."""
    expected: set[tuple[int, str]] = set()
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            match = _EXPECTED.search(token.string)
            if match:
                codes = {code.strip() for code in match["codes"].split(",")}
                expected |= {(token.start[0], code) for code in codes}
    return expected


def test_passes_type_checks_under_strict_mypy(
    mypy_errors: dict[Path, set[tuple[int, str]]],
) -> None:
    assert mypy_errors[PASSES] == set()
    assert expected_errors(PASSES) == set()


def test_fails_reports_exactly_the_marked_errors(
    mypy_errors: dict[Path, set[tuple[int, str]]],
) -> None:
    expected = expected_errors(FAILS)
    assert len(expected) >= 20, "fails.py lost its # E: markers"
    reported = mypy_errors[FAILS]
    assert sorted(reported - expected) == [], "mypy reports errors fails.py does not expect"
    assert sorted(expected - reported) == [], "fails.py expects errors mypy no longer reports"


def test_the_tree_run_excludes_fails_and_pytest_collects_neither() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"^tests/typing/fails\\\\.py$"' in text
    # pytest collects test_*.py only: these two are checked by mypy, never collected.
    assert not any(path.name.startswith("test_") for path in TYPING.glob("*.py"))


# --- the names are the spec's ---------------------------------------------------------------


def _literal_values(alias: object) -> tuple[str, ...]:
    values: list[str] = []
    for arg in typing.get_args(alias):
        values.extend(_literal_values(arg) if typing.get_args(arg) else [arg])
    return tuple(values)


def test_the_literal_event_types_are_the_event_tuples() -> None:
    assert _literal_values(BatchEvent) == BATCH_EVENTS
    assert _literal_values(RunEvent) == RUN_EVENTS
    assert set(_literal_values(KnownEvent)) == set(EVENTS)


def test_the_status_types_name_both_spellings_of_cancelled() -> None:
    for alias in (BatchStatus, RunStatus):
        assert {"succeeded", "failed", "partial_succeeded", "cancelled", "canceled"} == set(
            _literal_values(alias)
        )


def test_new_events_and_statuses_still_parse() -> None:
    payload = parse_callback(batch_body(event="batch.expired", status="expired"))
    assert isinstance(payload, GenericCallbackPayload)
    assert (payload.event, payload.status, payload.batch_id) == (
        "batch.expired",
        "expired",
        BATCH_ID,
    )
    known = parse_callback(batch_body(status="paused"))
    assert isinstance(known, BatchCallbackPayload)
    assert known.status == "paused"


# --- assert_never over what parse_callback really returns -----------------------------------


@pytest.fixture(scope="module")
def passes() -> ModuleType:
    """tests/typing/passes.py, imported as a module of its own."""
    spec = importlib.util.spec_from_file_location("runflow_typing_passes", PASSES)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _old_shape(**fields: Any) -> bytes:
    return dumps_payload({**fields, "output": None})


BIG_ITEMS = [{"run_id": RUN_ID, "status": "succeeded", "output": {"n": n}} for n in range(100)]
SHAPES = {
    "batch": (batch_body(), BatchCallbackPayload, "batch"),
    "large batch": (
        batch_body(output={"items": BIG_ITEMS, "succeeded": 100, "total": 100}),
        BatchCallbackPayload,
        "batch",
    ),
    "run": (run_body(event="run.failed"), RunCallbackPayload, "run"),
    "large run": (run_body(output={"text": "x" * 4096}), RunCallbackPayload, "run"),
    "unknown event": (batch_body(event="batch.expired"), GenericCallbackPayload, "other"),
    "old batch shape": (_old_shape(batch_id=BATCH_ID), BatchCallbackPayload, "batch"),
    "old run shape": (_old_shape(run_id=RUN_ID), RunCallbackPayload, "run"),
    "no subject": (b"{}", GenericCallbackPayload, "other"),
}


@pytest.mark.parametrize(("body", "model", "word"), SHAPES.values(), ids=SHAPES.keys())
def test_every_parsed_payload_is_one_of_the_three(
    passes: ModuleType, body: bytes, model: type[AnyCallbackPayload], word: str
) -> None:
    payload = parse_callback(body)
    assert type(payload) is model
    assert type(payload) in typing.get_args(AnyCallbackPayload)
    assert passes.describe(body).split()[0] == word
    assert passes.describe_with_isinstance(payload) == word


async def test_a_bare_context_narrows_the_same_way(passes: ModuleType) -> None:
    seen: list[str] = []
    receiver = passes.build_receiver(seen)
    await _post(receiver, batch_body(event="batch.failed"), passes.SECRET)
    await _post(receiver, run_body(event="run.failed"), passes.SECRET)
    assert seen == [f"any_payload batch {BATCH_ID}", f"mixed run {RUN_ID}"]


# --- dispatch: exact event, then on_batch / on_run, then on_any -----------------------------


async def _post(receiver: CallbackReceiver, body: bytes, secret: str) -> dict[str, Any]:
    result = await drive(receiver, chunks=[body], headers=signed(body, secret))
    assert result.status == 200, result.json()
    answer: dict[str, Any] = result.json()
    return answer


DISPATCH = [
    (batch_body(), f"batch_done {BATCH_ID} 0"),
    (batch_body(event="batch.partial_succeeded", output=None), f"batch_done {BATCH_ID} None"),
    (batch_body(event="batch.failed"), f"any_payload batch {BATCH_ID}"),
    (batch_body(event="batch.cancelled"), f"mixed batch {BATCH_ID}"),
    (run_body(), f"run_done {RUN_ID}"),
    (run_body(event="run.failed"), f"mixed run {RUN_ID}"),
    (run_body(event="run.cancelled"), f"any_run run.cancelled {RUN_ID}"),
    (run_body(event="run.partial_succeeded"), f"any_run run.partial_succeeded {RUN_ID}"),
    (batch_body(event="batch.expired"), f"future other {BATCH_ID}"),
    (batch_body(event="batch.brand_new"), f"everything_else other {BATCH_ID}"),
    (run_body(event="run.brand_new"), f"everything_else other {RUN_ID}"),
    (_old_shape(batch_id=BATCH_ID), f"any_batch None {BATCH_ID}"),
    (_old_shape(run_id=RUN_ID), f"any_run None {RUN_ID}"),
    (b"{}", "everything_else other None"),
]


@pytest.mark.parametrize(("body", "line"), DISPATCH, ids=[line for _, line in DISPATCH])
async def test_each_callback_reaches_the_handler_its_type_promises(
    passes: ModuleType, body: bytes, line: str
) -> None:
    seen: list[str] = []
    receiver = passes.build_receiver(seen)
    assert await _post(receiver, body, passes.SECRET) == {"status": "processed"}
    assert seen == [line]


@pytest.mark.parametrize(
    ("body", "line"),
    [item for item in DISPATCH if b'"event"' in item[0]],
    ids=[line for body, line in DISPATCH if b'"event"' in body],
)
async def test_with_a_store_the_same_handler_runs(
    passes: ModuleType, body: bytes, line: str
) -> None:
    seen: list[str] = []
    store = open_store("memory://")
    receiver = passes.build_receiver(seen, store)
    assert await _post(receiver, body, passes.SECRET) == {"status": "processed"}
    await store.close()
    assert seen == [line]


async def test_with_a_store_the_older_shape_reaches_on_batch(passes: ModuleType) -> None:
    seen: list[str] = []
    store = open_store("memory://")
    await _post(passes.build_receiver(seen, store), _old_shape(batch_id=BATCH_ID), passes.SECRET)
    await store.close()
    assert seen == [f"any_batch None {BATCH_ID}"]


async def test_fallbacks_take_objects_bound_methods_sync_and_async(passes: ModuleType) -> None:
    seen: list[str] = []
    receiver = passes.build_receiver_with_bare_fallbacks(seen)
    await _post(receiver, batch_body(), passes.SECRET)
    await _post(receiver, run_body(), passes.SECRET)
    await _post(receiver, batch_body(event="batch.failed"), passes.SECRET)
    assert seen == [f"recorder {BATCH_ID}", f"async_recorder {RUN_ID}"]
    fallback = receiver.handler_for("batch.failed")
    assert fallback is not None
    assert getattr(fallback, "__name__", None) == "append"


async def test_the_table_registers_dynamic_known_names(passes: ModuleType) -> None:
    seen: list[str] = []
    table = passes.build_table(seen, ["batch.failed", "run.failed"])
    assert set(table.events) == {"batch.failed", "run.failed", "run.partial_succeeded"}
    with pytest.raises(ConfigurationError, match=r"did you mean 'run\.failed'"):
        passes.build_table(seen, ["run.fail"])


def test_lookup_tries_the_event_then_the_kind_then_on_any() -> None:
    table = HandlerTable()

    def exact(context: CallbackContext[BatchCallbackPayload]) -> None: ...
    def batches(context: CallbackContext[BatchCallbackPayload]) -> None: ...
    def runs(context: CallbackContext[RunCallbackPayload]) -> None: ...
    def anything(context: CallbackContext) -> None: ...

    assert HandlerTable().empty
    table.on_batch(batches)
    assert not table.empty
    table.on("batch.succeeded")(exact)
    table.on_run(runs)
    table.on_any(anything)
    assert table.handler_for("batch.succeeded") is exact
    assert table.handler_for("batch.succeeded", "batch") is exact
    assert table.handler_for("batch.failed") is batches  # the kind of a known name
    assert table.handler_for("run.cancelled") is runs
    assert table.handler_for(None, "batch") is batches  # the older shape, kind given
    assert table.handler_for(None, "run") is runs
    assert table.handler_for(None) is anything  # no kind known: on_any
    assert table.handler_for("batch.brand_new") is anything  # a GenericCallbackPayload
    assert table.handler_for("batch.brand_new", "unknown") is anything
    assert table.events == ("batch.succeeded",)


def test_without_on_any_a_callback_of_no_kind_is_unhandled() -> None:
    table = HandlerTable()
    table.on_batch(lambda context: None)
    assert table.handler_for("run.completed") is None
    assert table.handler_for("batch.brand_new") is None
    assert table.handler_for("batch.failed") is not None


@pytest.mark.parametrize("fallback", ["on_batch", "on_run", "on_any"])
def test_each_fallback_is_registered_once(fallback: str) -> None:
    receiver = CallbackReceiver(secrets="whsec_typing_once")
    getattr(receiver, fallback)(lambda context: None)
    with pytest.raises(ConfigurationError, match=f"an {fallback} handler is already registered"):
        getattr(receiver, fallback)(lambda context: None)


def test_a_fallback_must_be_callable() -> None:
    receiver = CallbackReceiver(secrets="whsec_typing_once")
    with pytest.raises(ConfigurationError, match="handler"):
        receiver.on_batch("not callable")  # type: ignore[type-var] # the point of the test


# --- event names this version does not know -------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "closest"),
    [
        ("batch.succeded", "batch.succeeded"),
        ("batch.canceled", "batch.cancelled"),
        ("run.complete", "run.completed"),
        ("run.partial_success", "run.partial_succeeded"),
        ("Batch.Failed", "batch.failed"),
    ],
)
def test_a_typo_is_refused_naming_the_closest_known_event(typo: str, closest: str) -> None:
    receiver = CallbackReceiver(secrets="whsec_typing_typo")
    with pytest.raises(ConfigurationError, match="allow_unknown=True") as raised:
        receiver.on(typo)  # type: ignore[call-overload] # a str is refused statically too
    assert f"unknown event {typo!r}: did you mean {closest!r}?" in str(raised.value)
    assert raised.value.code == "configuration_error"


def test_a_name_like_no_known_event_lists_them_all() -> None:
    with pytest.raises(ConfigurationError) as raised:
        HandlerTable().on("invoice.paid", allow_unknown=False)
    assert all(event in str(raised.value) for event in EVENTS)


def test_one_unknown_name_registers_none_of_the_others() -> None:
    receiver = CallbackReceiver(secrets="whsec_typing_typo")
    with pytest.raises(ConfigurationError, match=r"'batch\.succeded'"):
        receiver.on("batch.failed", "batch.succeded")  # type: ignore[call-overload] # the typo
    assert tuple(receiver.events) == ()
    receiver.on("batch.failed")(lambda context: None)  # still free


async def test_allow_unknown_registers_a_name_runflow_may_add() -> None:
    receiver = CallbackReceiver(secrets="whsec_typing_unknown")
    seen: list[CallbackContext] = []
    receiver.on("batch.expired", "batch.succeeded", allow_unknown=True)(seen.append)
    assert set(receiver.events) == {"batch.expired", "batch.succeeded"}
    await _post(receiver, batch_body(event="batch.expired"), "whsec_typing_unknown")
    await _post(receiver, batch_body(), "whsec_typing_unknown")
    assert [type(context.payload) for context in seen] == [
        GenericCallbackPayload,
        BatchCallbackPayload,
    ]
    with pytest.raises(ConfigurationError, match="already registered"):
        receiver.on("batch.expired", allow_unknown=True)


def test_allow_unknown_still_refuses_what_is_no_name() -> None:
    with pytest.raises(ConfigurationError, match="non-empty str"):
        HandlerTable().on("", allow_unknown=True)


# --- the context, generic and still a frozen slots dataclass --------------------------------


def _context() -> CallbackContext[BatchCallbackPayload]:
    payload = parse_callback(batch_body())
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.created_at is not None
    return CallbackContext[BatchCallbackPayload](
        payload=payload,
        body=batch_body(),
        secret_id=None,
        secret_label=None,
        request_id=None,
        headers={},
        received_at=payload.created_at,
        signed=False,
    )


def test_a_subscripted_context_is_built_replaced_and_frozen() -> None:
    context = _context()
    assert not hasattr(context, "__dict__")
    assert "payload" in CallbackContext.__slots__
    again = dataclasses.replace(context, key="k", attempt=2)
    assert (again.key, again.attempt, again.payload) == ("k", 2, context.payload)
    assert type(again) is CallbackContext
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.key = "other"  # type: ignore[misc] # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        del again.key
    with pytest.raises(dataclasses.FrozenInstanceError):
        object.__getattribute__(again, "__setattr__")("not_a_field", 1)
