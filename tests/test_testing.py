"""The test kit: payload factories, signed requests and the tamper helpers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runflow_callbacks import (
    BatchCallbackPayload,
    ConfigurationError,
    MissingSignatureError,
    RunCallbackPayload,
    SignatureMismatchError,
    parse_callback,
    verify,
)
from runflow_callbacks.testing import (
    BATCH_EVENT_STATUS,
    EVENTS,
    RUN_EVENT_STATUS,
    PayloadFactory,
    batch_payload,
    compact,
    flip_byte,
    payload_for_event,
    run_payload,
    signed_request,
    signed_with,
    with_z_timestamps,
    without_signature,
)

SECRET = "whsec_test_0123456789abcdef"
NOW = datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc)


def factory(seed: int = 7) -> PayloadFactory:
    return PayloadFactory(clock=lambda: NOW, seed=seed)


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_round_trips_through_the_bytes(event: str) -> None:
    payloads = factory()
    payload = payloads.for_event(event)
    body = payloads.body(payload)
    parsed = parse_callback(body)
    assert type(parsed) is type(payload)
    assert parsed.event == event
    assert parsed.status == {**RUN_EVENT_STATUS, **BATCH_EVENT_STATUS}[event]
    assert payloads.body(parsed) == body
    assert list(json.loads(body))[:3] == ["event", parsed.kind + "_id", "status"]
    assert b'": "' in body
    assert b", " in body
    assert b"Z" not in body.replace(b"X-Amz", b"")


@pytest.mark.parametrize("event", list(BATCH_EVENT_STATUS))
@pytest.mark.parametrize("item_count", [2, 5])
def test_batch_counts_agree_with_items(event: str, item_count: int) -> None:
    payload = factory().batch(event, item_count=item_count)
    assert payload.output is not None
    items = payload.output.items or []
    assert payload.output.total == len(items) == item_count
    for status in ("succeeded", "failed", "cancelled"):
        assert getattr(payload.output, status) == sum(1 for i in items if i["status"] == status)
    for item in items:
        UUID(item["run_id"])
        if item["status"] == "succeeded":
            assert item["output"]["images"][0]["url"].startswith("https://")
            assert "X-Amz-Signature=" in item["output"]["images"][0]["url"]
            assert item["error"] is None
        if item["status"] == "failed":
            assert item["output"] is None
            assert set(item["error"]) == {"code", "message"}


def test_batch_statuses_are_realistic() -> None:
    payloads = factory()

    def statuses(event: str) -> set[str]:
        output = payloads.batch(event, item_count=4).output
        assert output is not None
        return {item["status"] for item in output.items or []}

    assert statuses("batch.succeeded") == {"succeeded"}
    assert statuses("batch.failed") == {"failed"}
    assert {"succeeded", "failed"} <= statuses("batch.partial_succeeded")
    assert "cancelled" in statuses("batch.cancelled")


def test_overrides_are_kept_and_counts_follow_given_items() -> None:
    batch_id = "0190f2a4-0000-7000-8000-000000000002"
    items = [
        {"run_id": "0190f2a4-0000-7000-8000-00000000000a", "status": "failed"},
        {"run_id": "0190f2a4-0000-7000-8000-00000000000b", "status": "canceled"},
    ]
    payload = factory().batch(
        status="partial_succeeded",
        batch_id=batch_id,
        items=items,
        metadata={"customer": "acme"},
        created_at=NOW - timedelta(seconds=3),
        completed_at=NOW,
        region="eu",
    )
    assert payload.event == "batch.partial_succeeded"
    assert str(payload.batch_id) == batch_id
    assert payload.metadata == {"customer": "acme"}
    assert payload.duration_ms == 3000
    assert payload.model_extra == {"region": "eu"}
    assert payload.output is not None
    assert (payload.output.failed, payload.output.cancelled, payload.output.total) == (1, 1, 2)
    body = PayloadFactory.body(payload)
    assert body.endswith(b'"metadata": {"customer": "acme"}, "region": "eu"}')


def test_explicit_output_is_verbatim_and_times_are_consistent() -> None:
    payload = factory().run("run.failed", output=None, duration_ms=1500)
    assert payload.output is None
    assert payload.completed_at == NOW
    assert payload.created_at == NOW - timedelta(milliseconds=1500)


def test_ids_are_uuid7_with_the_clock_time() -> None:
    run_id = factory().uuid7()
    assert run_id.version == 7
    assert run_id.int >> 80 == int(NOW.timestamp() * 1000)


def test_same_seed_same_payload_other_seed_other_ids() -> None:
    assert factory(1).body(factory(1).batch()) == factory(1).body(factory(1).batch())
    assert factory(1).batch().batch_id != factory(2).batch().batch_id


def test_status_alone_picks_the_event_and_cancelled_accepts_both_spellings() -> None:
    assert factory().run(status="failed").event == "run.failed"
    assert factory().batch(status="canceled").event == "batch.cancelled"


@pytest.mark.parametrize(
    "call",
    [
        lambda: factory().run("batch.succeeded"),
        lambda: factory().batch("batch.exploded"),
        lambda: factory().batch(status="weird"),
        lambda: factory().batch("batch.partial_succeeded", item_count=1),
        lambda: factory().batch(item_count=-1),
        lambda: factory().for_event("nothing.happened"),
        lambda: PayloadFactory(seed=1, rng=__import__("random").Random()),
    ],
)
def test_bad_factory_input_is_a_configuration_error(call: object) -> None:
    with pytest.raises(ConfigurationError):
        call()  # type: ignore[operator]


def test_module_level_helpers_return_models() -> None:
    assert isinstance(batch_payload(), BatchCallbackPayload)
    assert isinstance(run_payload("run.cancelled"), RunCallbackPayload)
    assert payload_for_event("batch.failed").status == "failed"
    assert batch_payload().batch_id != batch_payload().batch_id


# --- signed requests ----------------------------------------------------------------------


def test_signed_request_carries_runflow_headers_and_verifies() -> None:
    payload = factory().batch()
    request = signed_request(payload, SECRET)
    assert request.body == PayloadFactory.body(payload)
    assert request.headers["Content-Type"] == "application/json"
    assert request.signature is not None
    assert len(request.signature) == 64
    assert request.signature == request.signature.lower()
    assert verify(request.body, request.signature, SECRET).reveal() == SECRET
    UUID(request.request_id)
    assert signed_request(payload, SECRET).request_id != request.request_id
    assert request.json()["batch_id"] == str(payload.batch_id)


def test_signed_request_matches_the_known_answer_vector() -> None:
    body = (
        b'{"event": "run.completed", "run_id": "0190f2a4-0000-7000-8000-000000000001", '
        b'"status": "succeeded", "output": null, "duration_ms": 1000, '
        b'"created_at": "2026-05-06T10:00:00+00:00", '
        b'"completed_at": "2026-05-06T10:00:01+00:00", "metadata": null}'
    )
    request = signed_request(body, SECRET, request_id="req-1")
    assert request.signature == "e7558b3afbdff53dc9c9ae21aded9c261b340028115831539c6bf564f44e27b6"
    assert request.request_id == "req-1"
    payload = factory().run(
        run_id="0190f2a4-0000-7000-8000-000000000001",
        output=None,
        duration_ms=1000,
        completed_at=datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc),
    )
    assert signed_request(payload, SECRET).body == body


def test_unsigned_request_has_no_signature_header() -> None:
    request = signed_request(b"{}", None)
    assert request.signature is None
    assert "Runflow-Signature" not in request.headers


def test_signed_request_refuses_str() -> None:
    with pytest.raises(ConfigurationError, match="not str"):
        signed_request("{}", SECRET)  # type: ignore[arg-type]


@pytest.mark.parametrize("tamper", [flip_byte, with_z_timestamps, compact])
def test_reserialized_or_flipped_bodies_fail_verification(tamper: object) -> None:
    request = signed_request(factory().batch(), SECRET)
    broken = tamper(request)  # type: ignore[operator]
    assert broken.body != request.body
    assert broken.signature == request.signature
    with pytest.raises(SignatureMismatchError):
        verify(broken.body, broken.signature, SECRET)


def test_z_timestamps_and_compact_change_only_formatting() -> None:
    request = signed_request(factory().run(), SECRET)
    z_body = with_z_timestamps(request).body
    assert b"+00:00" not in z_body
    assert b'Z"' in z_body
    assert b": " not in compact(request).body
    assert json.loads(compact(request).body) == request.json()


def test_signed_with_another_secret_and_without_signature() -> None:
    request = signed_request(factory().run(), SECRET)
    other = signed_with(request, "whsec_other")
    assert other.body == request.body
    assert verify(other.body, other.signature, "whsec_other").reveal() == "whsec_other"
    with pytest.raises(SignatureMismatchError):
        verify(other.body, other.signature, SECRET)
    bare = without_signature(request)
    assert bare.signature is None
    assert bare.request_id == request.request_id
    with pytest.raises(MissingSignatureError):
        verify(bare.body, bare.signature, SECRET)


@pytest.mark.parametrize(
    ("tamper", "body"),
    [
        (flip_byte, b""),
        (lambda r: flip_byte(r, index=5), b"{}"),
        (with_z_timestamps, b'{"a": 1}'),
        (compact, b'{"a":1}'),
        (compact, b"not json"),
    ],
)
def test_tampering_impossible_input_is_a_clear_error(tamper: object, body: bytes) -> None:
    with pytest.raises(ConfigurationError):
        tamper(signed_request(body, SECRET))  # type: ignore[operator]


@given(index=st.integers(min_value=0, max_value=10_000), seed=st.integers(0, 2**32))
def test_any_flipped_byte_fails(index: int, seed: int) -> None:
    request = signed_request(PayloadFactory(clock=lambda: NOW, seed=seed).batch(), SECRET)
    broken = flip_byte(request, index=index % len(request.body))
    with pytest.raises(SignatureMismatchError):
        verify(broken.body, broken.signature, SECRET)
