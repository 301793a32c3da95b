"""Pydantic models of what Runflow sends: callback payloads and delivery-history records.

Parse *verified* bytes only, straight from the bytes (no ``json.loads`` first)::

    >>> payload = parse_callback(b'{"event": "batch.succeeded", '
    ...     b'"batch_id": "0190f2a4-0000-7000-8000-000000000002", "status": "succeeded"}')
    >>> type(payload).__name__, payload.kind, payload.subject_id
    ('BatchCallbackPayload', 'batch', '0190f2a4-0000-7000-8000-000000000002')

Every model keeps unknown fields (``model_extra``), so a field Runflow adds tomorrow is neither
lost nor an error; an unknown ``event`` parses into :class:`GenericCallbackPayload`.

:func:`parse_callback` returns :data:`AnyCallbackPayload`, the union of the three payload
classes, so that a ``match`` over it is checked for exhaustiveness::

    match parse_callback(body):
        case BatchCallbackPayload() as batch: ...
        case RunCallbackPayload() as run: ...
        case GenericCallbackPayload() as other: ...
        case unreachable:
            assert_never(unreachable)

The event and status names the spec knows are ``Literal`` types (:data:`BatchEvent`,
:data:`RunEvent`, :data:`KnownEvent`, :data:`BatchStatus`, :data:`RunStatus`), for annotations
and handler registration. The models' ``event`` and ``status`` fields stay ``str``: a name
Runflow adds tomorrow is kept, not rejected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from runflow_callbacks._deferred import DeferredField, defer, load_json, skim_batch, skim_run
from runflow_callbacks._events import BATCH_EVENTS, RUN_EVENTS
from runflow_callbacks.errors import InvalidPayloadError
from runflow_callbacks.verifier import Secret, sign

if TYPE_CHECKING:
    from runflow_callbacks.verifier import Body

__all__ = [
    "BATCH_EVENTS",
    "RUN_EVENTS",
    "AnyCallbackPayload",
    "BatchCallbackDelivery",
    "BatchCallbackPayload",
    "BatchEvent",
    "BatchOutput",
    "BatchStatus",
    "CallbackAttempt",
    "CallbackDelivery",
    "CallbackPayload",
    "GenericCallbackPayload",
    "KnownEvent",
    "PayloadKind",
    "RunCallbackDelivery",
    "RunCallbackPayload",
    "RunEvent",
    "RunStatus",
    "parse_callback",
    "parse_delivery_history",
]

BatchEvent: TypeAlias = Literal[
    "batch.succeeded", "batch.failed", "batch.cancelled", "batch.partial_succeeded"
]
"""The ``batch.*`` events of the spec (:data:`BATCH_EVENTS` as a type)."""

RunEvent: TypeAlias = Literal[
    "run.completed", "run.failed", "run.cancelled", "run.partial_succeeded"
]
"""The ``run.*`` events of the spec (:data:`RUN_EVENTS` as a type)."""

KnownEvent: TypeAlias = BatchEvent | RunEvent
"""Every event this version knows. Runflow may send others: they parse into
:class:`GenericCallbackPayload`."""

BatchStatus: TypeAlias = Literal[
    "succeeded", "failed", "partial_succeeded", "cancelled", "canceled"
]
"""The terminal statuses of a batch the spec names (both spellings of cancelled occur)."""

RunStatus: TypeAlias = Literal["succeeded", "failed", "partial_succeeded", "cancelled", "canceled"]
"""The terminal statuses of a run the spec names (both spellings of cancelled occur)."""

PayloadKind: TypeAlias = Literal["batch", "run", "unknown"]
"""``CallbackPayload.kind``: which payload class a callback parsed into."""

_EVENT_KINDS: Final = {**dict.fromkeys(RUN_EVENTS, "run"), **dict.fromkeys(BATCH_EVENTS, "batch")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class BatchOutput(DeferredField, _Model):
    """``output`` of a batch callback: ``{items, succeeded, failed, cancelled, total}``.

    The counts are checked integers. Items stay loosely typed (their shape is undocumented;
    expect objects with ``run_id``, ``status`` and ``output``/``error``) and are kept exactly
    as parsed.

    When :func:`parse_callback` parses a large batch, the counts and any field of ``output``
    this version does not know are validated at once, and the items are built on first use:
    reading ``items``, assigning, comparing, iterating, copying, pickling, ``repr`` or dumping
    the model. Until then they stay in the verified body the payload keeps, so code that only
    looks at the envelope and the counts never pays for building thousands of items.
    """

    items: list[Any] | None = None
    succeeded: int | None = None
    failed: int | None = None
    cancelled: int | None = None
    total: int | None = None


class CallbackPayload(_Model):
    """Fields shared by every callback envelope (spec section 2). All may be absent."""

    kind: ClassVar[PayloadKind] = "unknown"

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

    kind: ClassVar[PayloadKind] = "batch"

    batch_id: UUID
    output: BatchOutput | None = None

    @property
    def subject_id(self) -> str:
        return str(self.batch_id)


class RunCallbackPayload(CallbackPayload, DeferredField):
    """A ``run.*`` callback: carries ``run_id``.

    ``output`` is the normalized model output on success, an error envelope on failure and
    null when cancelled; its shape is undocumented, so it is kept as parsed. When
    :func:`parse_callback` parses a large run callback, an object or array ``output`` is built
    on first use, like a batch's items (see :class:`BatchOutput`).
    """

    kind: ClassVar[PayloadKind] = "run"

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


AnyCallbackPayload: TypeAlias = BatchCallbackPayload | RunCallbackPayload | GenericCallbackPayload
"""What :func:`parse_callback` returns: exactly one of the three payload classes."""

_MODELS_BY_KIND: Final[dict[str, type[AnyCallbackPayload]]] = {
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


def _summarize(error: ValidationError, *, at: tuple[str, ...] = ()) -> InvalidPayloadError:
    # Keep the location and type of each error, never the offending values (they may be
    # customer data or secrets someone put in metadata).
    details = [
        {"loc": [*at, *item["loc"]], "type": item["type"], "msg": item["msg"]}
        for item in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = f"callback body is not a valid payload: {first['msg']}"
    if where:
        message += f" (at {where})"
    return InvalidPayloadError(message, errors=details)


def parse_callback(body: Body, *, defer_items: bool = True) -> AnyCallbackPayload:
    """Parse verified callback bytes into the right payload model.

    Chooses :class:`BatchCallbackPayload` or :class:`RunCallbackPayload` from ``event`` (or, in
    the older shape without ``event``, from ``batch_id``/``run_id``), and
    :class:`GenericCallbackPayload` for any other event. Bytes that are not a JSON object of
    that shape raise :class:`~runflow_callbacks.errors.InvalidPayloadError`.

    A large batch or run body as Runflow writes it (``event`` first) is checked whole as JSON
    and its envelope validated, without building a batch's items or a run's output, which
    the models build on first use: parsing costs a fraction of building, and code that only
    routes, deduplicates or stores the callback never pays for them. The answer is the same
    either way (the same payload, or the same error). Reading them later costs that build on
    top; pass ``defer_items=False`` to build everything now when you know you will read it all.
    """
    if type(body) is not bytes:
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(
                f"parse_callback() takes the verified body bytes, not {type(body).__name__}"
            )
    if defer_items and body.startswith(_EVENT_FIRST):
        payload = _parse_envelope(body)
        if payload is not None:
            return payload
    data = load_json(body)
    if not isinstance(data, dict):
        raise InvalidPayloadError(
            f"a callback body must be a JSON object, not {_JSON_NAMES.get(type(data), 'null')}"
        )
    try:
        return _MODELS_BY_KIND[_payload_kind(data)].model_validate(data)
    except ValidationError as exc:
        raise _summarize(exc) from None


# --- batch items and run outputs, built on first use ----------------------------------------
#
# The eager path above parses the body into Python objects, then validates them. For a batch
# or run body written the way Runflow writes it (``event`` first), the public model's own
# validator reads the JSON instead, and for a body larger than a few KiB only its envelope:
# msgspec checks the whole body and finds the bytes of the batch's items or the run's output
# (``runflow_callbacks._deferred``), pydantic validates the body with a placeholder there, and
# the model keeps those bytes to build the field on first use. Validated from the JSON or from
# the Python objects, a model comes out the same (tests/test_models_deferred.py compares
# them); any error, any check that does not pass and any ``event`` the kind does not have
# (the last duplicate is the one that counts) sends the body to the eager path, which answers
# exactly as before.

_EVENT_FIRST: Final = b'{"event": "'
_BATCH_FIRST: Final = b'{"event": "batch.'
_RUN_FIRST: Final = b'{"event": "run.'
# Up to these sizes a body is fixed-cost bound: validating it whole from the JSON (items or
# output built at once) costs less than the skim plus the validation of the rest. A run's
# output is mostly small values, which cost more to build than a batch's few long strings.
_SKIM_BATCH_ABOVE: Final = 2048
_SKIM_RUN_ABOVE: Final = 512
_BATCH_EVENT_SET: Final = frozenset(BATCH_EVENTS)
_RUN_EVENT_SET: Final = frozenset(RUN_EVENTS)
# Called directly: model_validate_json's keyword handling is a measurable part of 1 KiB.
_BATCH_VALIDATOR: Final = BatchCallbackPayload.__pydantic_validator__
_RUN_VALIDATOR: Final = RunCallbackPayload.__pydantic_validator__


def _parse_envelope(body: bytes) -> BatchCallbackPayload | RunCallbackPayload | None:
    if body.startswith(_BATCH_FIRST):
        skim, validator, events = skim_batch, _BATCH_VALIDATOR, _BATCH_EVENT_SET
        skim_above = _SKIM_BATCH_ABOVE
    elif body.startswith(_RUN_FIRST):
        skim, validator, events = skim_run, _RUN_VALIDATOR, _RUN_EVENT_SET
        skim_above = _SKIM_RUN_ABOVE
    else:
        return None
    split = None
    if len(body) > skim_above:
        split = skim(body)
        if split is None:
            return None
    try:
        payload: BatchCallbackPayload | RunCallbackPayload = validator.validate_json(
            body if split is None else split[0]
        )
    except ValidationError:
        return None
    event = payload.event
    if not isinstance(event, str) or event not in events:
        return None
    if split is not None:
        if isinstance(payload, RunCallbackPayload):
            defer(payload, "output", split[1])
        else:
            output = payload.output
            if output is None:  # cannot happen: the skim found an object with items
                return None
            defer(output, "items", split[1])
    return payload


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

    def parse_payload(self) -> AnyCallbackPayload | None:
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
