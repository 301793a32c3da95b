"""Pydantic models of what Runflow sends: callback payloads and delivery-history records.

Parse *verified* bytes only, straight from the bytes (no ``json.loads`` first)::

    >>> payload = parse_callback(b'{"event": "batch.succeeded", '
    ...     b'"batch_id": "0190f2a4-0000-7000-8000-000000000002", "status": "succeeded"}')
    >>> type(payload).__name__, payload.kind, payload.subject_id
    ('BatchCallbackPayload', 'batch', '0190f2a4-0000-7000-8000-000000000002')

Every model keeps unknown fields (``model_extra``), so a field Runflow adds tomorrow is neither
lost nor an error; an unknown ``event`` parses into :class:`GenericCallbackPayload`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from runflow_callbacks.errors import InvalidPayloadError
from runflow_callbacks.verifier import Secret, sign

if TYPE_CHECKING:
    from runflow_callbacks.verifier import Body

__all__ = [
    "BATCH_EVENTS",
    "RUN_EVENTS",
    "BatchCallbackDelivery",
    "BatchCallbackPayload",
    "BatchOutput",
    "CallbackAttempt",
    "CallbackDelivery",
    "CallbackPayload",
    "GenericCallbackPayload",
    "RunCallbackDelivery",
    "RunCallbackPayload",
    "parse_callback",
    "parse_delivery_history",
]

RUN_EVENTS: Final = ("run.completed", "run.failed", "run.cancelled", "run.partial_succeeded")
BATCH_EVENTS: Final = (
    "batch.succeeded",
    "batch.failed",
    "batch.cancelled",
    "batch.partial_succeeded",
)
_EVENT_KINDS: Final = {**dict.fromkeys(RUN_EVENTS, "run"), **dict.fromkeys(BATCH_EVENTS, "batch")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class BatchOutput(_Model):
    """``output`` of a batch callback: ``{items, succeeded, failed, cancelled, total}``.

    The counts are checked integers. Items stay loosely typed (their shape is undocumented;
    expect objects with ``run_id``, ``status`` and ``output``/``error``) and are kept exactly
    as parsed, which also keeps parsing a large batch cheap.
    """

    items: list[Any] | None = None
    succeeded: int | None = None
    failed: int | None = None
    cancelled: int | None = None
    total: int | None = None


class CallbackPayload(_Model):
    """Fields shared by every callback envelope (spec section 2). All may be absent."""

    kind: ClassVar[Literal["batch", "run", "unknown"]] = "unknown"

    event: str | None = None
    status: str | None = None
    output: Any = None
    duration_ms: int | None = None
    created_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    metadata: Any = None

    @property
    def subject_id(self) -> str | None:
        """The batch or run id as a string (None when the payload has neither)."""
        return None


class BatchCallbackPayload(CallbackPayload):
    """A ``batch.*`` callback: carries ``batch_id`` and a :class:`BatchOutput`."""

    kind: ClassVar[Literal["batch", "run", "unknown"]] = "batch"

    batch_id: UUID
    output: BatchOutput | None = None

    @property
    def subject_id(self) -> str:
        return str(self.batch_id)


class RunCallbackPayload(CallbackPayload):
    """A ``run.*`` callback: carries ``run_id``.

    ``output`` is the normalized model output on success, an error envelope on failure and
    null when cancelled; its shape is undocumented, so it is kept as parsed.
    """

    kind: ClassVar[Literal["batch", "run", "unknown"]] = "run"

    run_id: UUID

    @property
    def subject_id(self) -> str:
        return str(self.run_id)


class GenericCallbackPayload(CallbackPayload):
    """A callback whose event this version does not know. Everything is kept as sent."""

    run_id: str | None = None
    batch_id: str | None = None

    @property
    def subject_id(self) -> str | None:
        return self.batch_id or self.run_id


_MODELS_BY_KIND: Final[dict[str, type[CallbackPayload]]] = {
    "batch": BatchCallbackPayload,
    "run": RunCallbackPayload,
    "unknown": GenericCallbackPayload,
}


def _payload_kind(data: dict[str, Any]) -> str:
    event = data.get("event")
    if event is None:
        if "batch_id" in data:
            return "batch"
        return "run" if "run_id" in data else "unknown"
    return _EVENT_KINDS.get(event, "unknown") if isinstance(event, str) else "unknown"


def _summarize(error: ValidationError) -> InvalidPayloadError:
    # Keep the location and type of each error, never the offending values (they may be
    # customer data or secrets someone put in metadata).
    details = [
        {"loc": list(item["loc"]), "type": item["type"], "msg": item["msg"]}
        for item in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = f"callback body is not a valid payload: {first['msg']}"
    if where:
        message += f" (at {where})"
    return InvalidPayloadError(message, errors=details)


def parse_callback(body: Body) -> CallbackPayload:
    """Parse verified callback bytes into the right payload model.

    Chooses :class:`BatchCallbackPayload` or :class:`RunCallbackPayload` from ``event`` (or, in
    the older shape without ``event``, from ``batch_id``/``run_id``), and
    :class:`GenericCallbackPayload` for any other event. Bytes that are not a JSON object of
    that shape raise :class:`~runflow_callbacks.errors.InvalidPayloadError`.
    """
    if isinstance(body, memoryview):
        body = body.tobytes()
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(
            f"parse_callback() takes the verified body bytes, not {type(body).__name__}"
        )
    # One pass of pydantic-core's JSON parser (keys interned, values never echoed in errors),
    # then validation of the Python objects against the model the event selects.
    try:
        data = from_json(body, cache_strings="keys")
    except ValueError as exc:
        data = _loads_leniently(body, exc)
    if not isinstance(data, dict):
        raise InvalidPayloadError(
            f"a callback body must be a JSON object, not {_JSON_NAMES.get(type(data), 'null')}"
        )
    try:
        return _MODELS_BY_KIND[_payload_kind(data)].model_validate(data)
    except ValidationError as exc:
        raise _summarize(exc) from None


def _loads_leniently(body: bytes | bytearray, error: ValueError) -> Any:
    # Python's json (what Runflow writes with) also reads escaped lone surrogates such as
    # "\udcff", which pydantic-core refuses; a verified body must not be lost over that.
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidPayloadError(f"callback body is not valid JSON: {error}") from None


_JSON_NAMES: Final[dict[type, str]] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


# --- delivery history --------------------------------------------------------------------


class CallbackAttempt(_Model):
    """One HTTP attempt of a delivery. ``status_code`` is the receiver's HTTP answer."""

    id: UUID | None = None
    delivery_id: UUID | None = None
    attempt_number: int | None = None
    status_code: int | None = None
    response_body: str | None = None
    response_time_ms: int | None = None
    error_message: str | None = None
    created_at: AwareDatetime | None = None


class CallbackDelivery(_Model):
    """Fields shared by batch and run delivery records (spec section 3). Every field may be null.

    ``status_code`` is Runflow's delivery *state* (a string), unlike the attempts' HTTP status.
    """

    id: UUID | None = None
    callback_url: str | None = None
    payload_bytes: str | None = None
    payload: dict[str, Any] | None = None
    signing_secret_id: UUID | None = None
    is_automatic: bool | None = None
    status_code: str | None = None
    failure_reason_code: str | None = None
    failure_detail: str | None = None
    attempt_count: int | None = None
    max_attempts: int | None = None
    next_attempt_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    attempts: list[CallbackAttempt] | None = Field(default=None)

    @property
    def body(self) -> bytes | None:
        """The exact bytes Runflow sent and signed (``payload_bytes`` as UTF-8)."""
        return None if self.payload_bytes is None else self.payload_bytes.encode("utf-8")

    def parse_payload(self) -> CallbackPayload | None:
        """Parse ``payload_bytes`` (not the ``payload`` object) into a payload model."""
        body = self.body
        return None if body is None else parse_callback(body)

    def expected_signature(self, secret: str | Secret) -> str | None:
        """The ``Runflow-Signature`` Runflow sent for this delivery, if it signed with ``secret``.

        Compare it with what your receiver computed to debug a 401 in the history.
        """
        body = self.body
        return None if body is None else sign(body, secret)


class BatchCallbackDelivery(CallbackDelivery):
    """A delivery record of ``GET /v1/batches/{batch_id}/callback``."""

    batch_id: UUID | None = None


class RunCallbackDelivery(CallbackDelivery):
    """A delivery record of ``GET /v1/runs/{run_id}/callback``."""

    run_id: UUID | None = None


_BATCH_HISTORY = TypeAdapter(list[BatchCallbackDelivery])
_RUN_HISTORY = TypeAdapter(list[RunCallbackDelivery])


def parse_delivery_history(
    body: bytes | str, *, kind: Literal["batch", "run"]
) -> list[BatchCallbackDelivery] | list[RunCallbackDelivery]:
    """Parse the JSON array answered by the delivery-history endpoint."""
    adapter: TypeAdapter[Any] = _BATCH_HISTORY if kind == "batch" else _RUN_HISTORY
    try:
        result: list[BatchCallbackDelivery] | list[RunCallbackDelivery] = adapter.validate_json(
            body
        )
    except ValidationError as exc:
        raise _summarize(exc) from None
    return result
