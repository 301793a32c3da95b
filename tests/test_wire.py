"""The wire writer: Runflow's bytes exactly, and parse → write gives the same bytes back."""

from __future__ import annotations

import json
import string
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_callbacks.models import BATCH_EVENTS, RUN_EVENTS, parse_callback
from runflow_callbacks.verifier import sign
from runflow_callbacks.wire import FIELD_ORDER, dumps_payload, payload_to_dict

KNOWN = json.loads((Path(__file__).parent / "vectors" / "spec_known_answer.json").read_text())


def test_spec_vector_is_written_byte_for_byte() -> None:
    envelope = {
        "metadata": None,
        "completed_at": datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc),
        "created_at": datetime(2026, 5, 6, 10, 0, 0, tzinfo=timezone.utc),
        "duration_ms": 1000,
        "output": None,
        "status": "succeeded",
        "run_id": UUID("0190f2a4-0000-7000-8000-000000000001"),
        "event": "run.completed",
    }
    body = dumps_payload(envelope)
    assert body == KNOWN["body"].encode()
    assert sign(body, KNOWN["secret"]) == KNOWN["signature"]


def test_spec_vector_survives_parse_and_write() -> None:
    body = KNOWN["body"].encode()
    assert dumps_payload(parse_callback(body)) == body


def test_known_fields_first_then_the_rest_in_their_order() -> None:
    data = {"zeta": 1, "status": "failed", "alpha": 2, "event": "run.failed"}
    assert list(payload_to_dict(data)) == ["event", "status", "zeta", "alpha"]
    assert data == {"zeta": 1, "status": "failed", "alpha": 2, "event": "run.failed"}


def test_json_dumps_defaults_are_kept() -> None:
    body = dumps_payload({"event": "run.completed", "metadata": {"name": "Zoë", "n": [1, 2]}})
    assert body == b'{"event": "run.completed", "metadata": {"name": "Zo\\u00eb", "n": [1, 2]}}'


def test_datetimes_keep_plus_zero_and_microseconds() -> None:
    moment = datetime(2026, 5, 6, 10, 0, 1, 120000, tzinfo=timezone.utc)
    assert dumps_payload({"created_at": moment}) == (
        b'{"created_at": "2026-05-06T10:00:01.120000+00:00"}'
    )


def test_unserializable_values_are_type_errors() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        dumps_payload({"metadata": {1, 2}})


def test_a_legacy_payload_stays_without_event_and_status() -> None:
    body = b'{"run_id": "0190f2a4-0000-7000-8000-000000000001", "output": null}'
    assert dumps_payload(parse_callback(body)) == body


# --- the round-trip property -------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
extra_names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10).filter(
    lambda name: name not in FIELD_ORDER
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
) | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
).map(lambda moment: moment.replace(microsecond=0))
counts = st.none() | st.integers(0, 10_000)


@st.composite
def batch_outputs(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    output: dict[str, Any] = {"items": draw(st.none() | st.lists(json_values, max_size=4))}
    for name in ("succeeded", "failed", "cancelled", "total"):
        output[name] = draw(counts)
    output.update(draw(st.dictionaries(extra_names.filter(lambda n: n not in output), json_values)))
    return output


@st.composite
def runflow_payloads(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["run", "batch", "legacy run", "legacy batch", "unknown"]))
    payload: dict[str, Any] = {}
    if not kind.startswith("legacy"):
        events = {"run": RUN_EVENTS, "batch": BATCH_EVENTS, "unknown": ("batch.archived",)}
        payload["event"] = draw(st.sampled_from(events[kind]))
    if kind != "unknown":
        payload["run_id" if kind.endswith("run") else "batch_id"] = draw(st.uuids())
    if not kind.startswith("legacy"):
        payload["status"] = draw(st.sampled_from(["succeeded", "failed", "canceled", "cancelled"]))
    payload["output"] = draw(batch_outputs() if kind.endswith("batch") else json_values)
    payload["duration_ms"] = draw(st.none() | st.integers(0, 10**9))
    payload["created_at"] = draw(moments)
    payload["completed_at"] = draw(st.none() | moments)
    payload["metadata"] = draw(json_values)
    payload.update(draw(st.dictionaries(extra_names, json_values, max_size=3)))
    return payload


@settings(max_examples=150)
@given(payload=runflow_payloads())
def test_parse_then_write_gives_identical_bytes(payload: dict[str, Any]) -> None:
    body = dumps_payload(payload)
    assert dumps_payload(parse_callback(body)) == body
