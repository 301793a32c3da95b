"""Payload and delivery-history models: every event and status, legacy and unknown shapes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from runflow_callbacks.errors import InvalidPayloadError, RunflowCallbackError, VerificationError
from runflow_callbacks.models import (
    BATCH_EVENTS,
    RUN_EVENTS,
    BatchCallbackDelivery,
    BatchCallbackPayload,
    BatchOutput,
    CallbackAttempt,
    GenericCallbackPayload,
    RunCallbackDelivery,
    RunCallbackPayload,
    parse_callback,
    parse_delivery_history,
)
from runflow_callbacks.verifier import sign

RUN_ID = "0190f2a4-0000-7000-8000-000000000001"
BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
SECRET_ID = "0190f2a4-0000-7000-8000-0000000000aa"
SECRET = "whsec_models_0123456789abcdef"


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _run(**overrides: Any) -> dict[str, Any]:
    return {
        "event": "run.completed",
        "run_id": RUN_ID,
        "status": "succeeded",
        "output": {"images": [{"url": "https://outputs.runflow.io/a.png"}]},
        "duration_ms": 1000,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:00:01.123456+00:00",
        "metadata": {"order": 42},
        **overrides,
    }


def _items() -> list[dict[str, Any]]:
    return [
        {"run_id": RUN_ID, "status": "succeeded", "output": {"text": "hi"}, "error": None},
        {"run_id": RUN_ID, "status": "failed", "output": None, "error": {"code": "timeout"}},
    ]


def _batch(**overrides: Any) -> dict[str, Any]:
    output = {"items": _items(), "succeeded": 1, "failed": 1, "cancelled": 0, "total": 2}
    return {**_run(output=output), "event": "batch.partial_succeeded", **overrides} | (
        {"batch_id": BATCH_ID} if "batch_id" not in overrides else {}
    )


def _without(data: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in names}


# --- events and statuses -----------------------------------------------------------------


@pytest.mark.parametrize("event", RUN_EVENTS)
@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "canceled"])
def test_every_run_event_and_status(event: str, status: str) -> None:
    payload = parse_callback(_body(**_run(event=event, status=status)))
    assert isinstance(payload, RunCallbackPayload)
    assert (payload.kind, payload.event, payload.status) == ("run", event, status)
    assert payload.run_id == UUID(RUN_ID)
    assert payload.subject_id == RUN_ID


@pytest.mark.parametrize("event", BATCH_EVENTS)
@pytest.mark.parametrize("status", ["succeeded", "failed", "partial_succeeded", "canceled"])
def test_every_batch_event_and_status(event: str, status: str) -> None:
    payload = parse_callback(_body(**_without(_batch(event=event, status=status), "run_id")))
    assert isinstance(payload, BatchCallbackPayload)
    assert (payload.kind, payload.event, payload.status) == ("batch", event, status)
    assert payload.subject_id == BATCH_ID
    assert payload.output == BatchOutput(
        items=_items(), succeeded=1, failed=1, cancelled=0, total=2
    )


def test_run_output_stays_as_sent() -> None:
    for output in (None, {"error": {"code": "model_error"}}, ["a"], "text"):
        payload = parse_callback(_body(**_run(output=output)))
        assert payload.output == output


def test_batch_output_may_be_null_or_partial() -> None:
    payload = parse_callback(_body(**_without(_batch(output=None), "run_id")))
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.output is None
    payload = parse_callback(_body(**_without(_batch(output={"total": 0}), "run_id")))
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.output == BatchOutput(total=0)


@pytest.mark.parametrize(
    ("count", "where"),
    [("three", "output.succeeded"), (1.5, "output.succeeded"), ([1], "output.succeeded")],
)
def test_batch_counts_are_checked(count: object, where: str) -> None:
    output = {"items": [], "succeeded": count}
    with pytest.raises(InvalidPayloadError) as raised:
        parse_callback(_body(**_without(_batch(output=output), "run_id")))
    assert raised.value.errors[0]["loc"] == where.split(".")
    assert where in str(raised.value)


# --- legacy and unknown shapes -----------------------------------------------------------


def test_legacy_payload_without_event_and_status() -> None:
    run = parse_callback(_body(**_without(_run(), "event", "status")))
    assert isinstance(run, RunCallbackPayload)
    assert (run.event, run.status) == (None, None)
    batch = parse_callback(_body(**_without(_batch(), "event", "status", "run_id")))
    assert isinstance(batch, BatchCallbackPayload)
    assert batch.subject_id == BATCH_ID


@pytest.mark.parametrize(
    "event", ["batch.archived", "run.started", "webhook.test", "", "RUN.COMPLETED", None]
)
def test_unknown_events_never_fail(event: str | None) -> None:
    payload = parse_callback(_body(event=event, status="whatever", future={"nested": [1, 2]}))
    assert isinstance(payload, GenericCallbackPayload)
    assert (payload.kind, payload.event, payload.subject_id) == ("unknown", event, None)
    assert payload.model_extra == {"future": {"nested": [1, 2]}}


def test_a_non_string_event_is_invalid() -> None:
    with pytest.raises(InvalidPayloadError, match="at event"):
        parse_callback(_body(event=7))


def test_unknown_event_keeps_its_subject() -> None:
    payload = parse_callback(_body(event="batch.archived", batch_id=BATCH_ID, extra=1))
    assert isinstance(payload, GenericCallbackPayload)
    assert payload.subject_id == BATCH_ID
    assert payload.model_extra == {"extra": 1}


def test_unknown_fields_are_kept_everywhere() -> None:
    data = _without(_batch(priority="high"), "run_id")
    data["output"]["pages"] = 3
    data["output"]["items"][0]["cost_usd"] = 0.002
    payload = parse_callback(_body(**data))
    assert isinstance(payload, BatchCallbackPayload)
    assert payload.model_extra == {"priority": "high"}
    assert payload.output is not None
    assert payload.output.model_extra == {"pages": 3}
    assert payload.output.items is not None
    assert payload.output.items[0]["cost_usd"] == 0.002


# --- datetimes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-06T10:00:01+00:00", datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc)),
        ("2026-05-06T10:00:01.123+00:00", datetime(2026, 5, 6, 10, 0, 1, 123000, timezone.utc)),
        (
            "2026-05-06T10:00:01.123456+00:00",
            datetime(2026, 5, 6, 10, 0, 1, 123456, tzinfo=timezone.utc),
        ),
        ("2026-05-06T10:00:01Z", datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc)),
        (
            "2026-05-06T12:00:01+02:00",
            datetime(2026, 5, 6, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
    ids=["no fraction", "3 digits", "6 digits", "Z", "offset"],
)
def test_datetimes_are_timezone_aware(text: str, expected: datetime) -> None:
    payload = parse_callback(_body(**_run(completed_at=text)))
    assert payload.completed_at == expected
    assert payload.completed_at is not None
    assert payload.completed_at.utcoffset() is not None


def test_naive_datetime_is_invalid() -> None:
    with pytest.raises(InvalidPayloadError, match="completed_at"):
        parse_callback(_body(**_run(completed_at="2026-05-06T10:00:01")))


# --- bodies that are not payloads --------------------------------------------------------

NOT_OBJECTS = {
    "array": (b"[]", "not an array"),
    "string": (b'"run.completed"', "not a string"),
    "number": (b"1", "not a number"),
    "null": (b"null", "not null"),
    "boolean": (b"true", "not a boolean"),
    "empty": (b"", "not valid JSON"),
    "truncated": (_body(**_run())[:-1], "not valid JSON"),
    "trailing data": (_body(**_run()) + b"{}", "not valid JSON"),
    "not UTF-8": (b'{"event": "\xff"}', "not valid JSON"),
    "deep nesting": (b"[" * 100_000, "not valid JSON"),
    "bad run_id": (_body(**_run(run_id="run_123")), "run_id"),
    "missing run_id": (_body(**_without(_run(), "run_id")), "run_id"),
}


@pytest.mark.parametrize(("body", "message"), NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
def test_invalid_payloads(body: bytes, message: str) -> None:
    with pytest.raises(InvalidPayloadError, match=message) as raised:
        parse_callback(body)
    assert isinstance(raised.value, RunflowCallbackError)
    assert not isinstance(raised.value, VerificationError)


def test_invalid_payload_errors_never_echo_values() -> None:
    leaked = "whsec_leaked_into_metadata_0000"
    with pytest.raises(InvalidPayloadError) as raised:
        parse_callback(_body(**_run(run_id=leaked, duration_ms=leaked)))
    assert leaked not in str(raised.value)
    assert leaked not in repr(raised.value.errors)
    assert {tuple(e["loc"]) for e in raised.value.errors} == {("run_id",), ("duration_ms",)}


def test_escaped_lone_surrogates_are_accepted_like_json_does() -> None:
    payload = parse_callback(_body(**_run(metadata={"name": "\udcff"})))
    assert payload.metadata == {"name": "\udcff"}


def test_buffer_types_and_str() -> None:
    body = _body(**_run())
    assert parse_callback(bytearray(body)) == parse_callback(memoryview(body))
    with pytest.raises(TypeError, match="verified body bytes"):
        parse_callback(body.decode())  # type: ignore[arg-type]


# --- delivery history --------------------------------------------------------------------


def _attempt(number: int, status_code: int | None) -> dict[str, Any]:
    return {
        "id": f"0190f2a4-0000-7000-8000-00000000010{number}",
        "delivery_id": "0190f2a4-0000-7000-8000-000000000100",
        "attempt_number": number,
        "status_code": status_code,
        "response_body": "nope" if status_code != 200 else "ok",
        "response_time_ms": 87,
        "error_message": None if status_code else "timeout after 10s",
        "created_at": "2026-05-06T10:00:02.5+00:00",
    }


def _delivery(subject: str, subject_id: str, body: bytes) -> dict[str, Any]:
    return {
        "id": "0190f2a4-0000-7000-8000-000000000100",
        subject: subject_id,
        "callback_url": "https://example.com/callbacks/runflow",
        "payload_bytes": body.decode(),
        "payload": json.loads(body),
        "signing_secret_id": SECRET_ID,
        "is_automatic": True,
        "status_code": "delivered",
        "failure_reason_code": None,
        "failure_detail": None,
        "attempt_count": 2,
        "max_attempts": 5,
        "next_attempt_at": None,
        "created_at": "2026-05-06T10:00:01.5+00:00",
        "updated_at": "2026-05-06T10:00:03+00:00",
        "completed_at": "2026-05-06T10:00:03+00:00",
        "attempts": [_attempt(1, None), _attempt(2, 200)],
        "shard": "eu-1",
    }


def test_batch_delivery_history() -> None:
    body = _body(**_without(_batch(), "run_id"))
    history = parse_delivery_history(
        json.dumps([_delivery("batch_id", BATCH_ID, body)]).encode(), kind="batch"
    )
    [delivery] = history
    assert isinstance(delivery, BatchCallbackDelivery)
    assert delivery.batch_id == UUID(BATCH_ID)
    assert delivery.status_code == "delivered"
    assert delivery.signing_secret_id == UUID(SECRET_ID)
    assert delivery.model_extra == {"shard": "eu-1"}
    assert delivery.attempts is not None
    first, second = delivery.attempts
    assert isinstance(first, CallbackAttempt)
    assert (first.status_code, first.error_message) == (None, "timeout after 10s")
    assert (second.status_code, second.attempt_number) == (200, 2)
    assert second.created_at == datetime(2026, 5, 6, 10, 0, 2, 500000, tzinfo=timezone.utc)
    assert delivery.body == body
    assert delivery.parse_payload() == parse_callback(body)
    assert delivery.expected_signature(SECRET) == sign(body, SECRET)


def test_run_delivery_history_from_str() -> None:
    body = _body(**_run())
    text = json.dumps([_delivery("run_id", RUN_ID, body)])
    [delivery] = parse_delivery_history(text, kind="run")
    assert isinstance(delivery, RunCallbackDelivery)
    assert delivery.run_id == UUID(RUN_ID)
    assert isinstance(delivery.parse_payload(), RunCallbackPayload)


def test_payload_bytes_with_non_ascii_text_sign_as_utf8() -> None:
    body = json.dumps(_run(metadata={"name": "Zoë"}), ensure_ascii=False).encode()
    [delivery] = parse_delivery_history(json.dumps([{"payload_bytes": body.decode()}]), kind="run")
    assert delivery.body == body
    assert delivery.expected_signature(SECRET) == sign(body, SECRET)


def test_every_delivery_field_may_be_null() -> None:
    names = set(BatchCallbackDelivery.model_fields)
    record = dict.fromkeys(names)
    [delivery] = parse_delivery_history(json.dumps([record]), kind="batch")
    assert all(getattr(delivery, name) is None for name in names)
    assert delivery.body is None
    assert delivery.parse_payload() is None
    assert delivery.expected_signature(SECRET) is None
    [attempt] = (CallbackAttempt.model_validate(dict.fromkeys(CallbackAttempt.model_fields)),)
    assert attempt.status_code is None


@pytest.mark.parametrize(
    "body", [b"{}", b"[1]", b'[{"attempt_count": "many"}]', b"nope"], ids=["object", "1", "c", "j"]
)
def test_bad_delivery_history(body: bytes) -> None:
    with pytest.raises(InvalidPayloadError):
        parse_delivery_history(body, kind="run")
