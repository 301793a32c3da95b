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
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, cast
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    create_model,
    model_serializer,
)
from pydantic_core import from_json
from typing_extensions import TypedDict

from runflow_callbacks._events import BATCH_EVENTS, RUN_EVENTS
from runflow_callbacks.errors import InvalidPayloadError
from runflow_callbacks.verifier import Secret, sign

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from pydantic import GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema
    from typing_extensions import Self

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

_EVENT_KINDS: Final = {**dict.fromkeys(RUN_EVENTS, "run"), **dict.fromkeys(BATCH_EVENTS, "batch")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class BatchOutput(_Model):
    """``output`` of a batch callback: ``{items, succeeded, failed, cancelled, total}``.

    The counts are checked integers. Items stay loosely typed (their shape is undocumented;
    expect objects with ``run_id``, ``status`` and ``output``/``error``) and are kept exactly
    as parsed.

    When :func:`parse_callback` builds it, the counts are validated at once and the items (and
    any field of ``output`` this version does not know) are built on first use: reading
    ``items``, ``model_extra``, ``model_fields_set`` or an unknown field, assigning, comparing,
    iterating, copying, pickling or dumping the model. Until then they stay in the verified
    body the payload keeps, so code that only looks at the envelope and the counts never pays
    for building thousands of items.
    """

    items: list[Any] | None = None
    succeeded: int | None = None
    failed: int | None = None
    cancelled: int | None = None
    total: int | None = None

    # A deferred instance (see ``_parse_batch_deferring_items``) keeps the body it came from in
    # ``__pydantic_private__``, which is None otherwise, as in any model without private
    # attributes (declaring one would make pydantic initialize it on every validation).

    def _materialize(self) -> None:
        private = self.__pydantic_private__
        if private is None:
            return
        # pydantic-core's parser straight into Python objects, then validation of the output
        # alone: faster than validating from JSON, which builds a tree before the objects.
        data = _load_json(private["_deferred_body"])
        try:
            built = BatchOutput.model_validate(data["output"])
        except ValidationError as exc:
            raise _summarize(exc, at=("output",)) from None
        # Adopt the built state; ``__dict__`` is swapped whole (fields in their declared order),
        # so that another thread reading meanwhile sees the old or the new, never a half.
        object.__setattr__(self, "__pydantic_extra__", built.__pydantic_extra__)
        object.__setattr__(self, "__pydantic_fields_set__", built.__pydantic_fields_set__)
        object.__setattr__(self, "__dict__", built.__dict__)
        object.__setattr__(self, "__pydantic_private__", None)

    if not TYPE_CHECKING:  # keep static attribute checking strict

        def __getattr__(self, name: str) -> Any:
            if not name.startswith("_") and self.__pydantic_private__ is not None:
                self._materialize()
                return getattr(self, name)
            return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._materialize()
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if not name.startswith("_"):
            self._materialize()
        super().__delattr__(name)

    def __eq__(self, other: object) -> bool:
        self._materialize()
        if isinstance(other, BatchOutput):
            other._materialize()
        return super().__eq__(other)

    # Compared by value and mutable, so unhashable, as any non-frozen pydantic model.
    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Generator[tuple[str, Any], None, None]:
        self._materialize()
        return super().__iter__()

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        self._materialize()
        return super().__repr_args__()

    def __getstate__(self) -> dict[Any, Any]:
        self._materialize()
        return super().__getstate__()

    def __copy__(self) -> Self:
        self._materialize()
        return super().__copy__()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        self._materialize()
        return super().__deepcopy__(memo)

    @property
    def model_extra(self) -> dict[str, Any] | None:
        self._materialize()
        return super().model_extra

    @property
    def model_fields_set(self) -> set[str]:
        self._materialize()
        return super().model_fields_set

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        self._materialize()
        return handler(self)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler, /
    ) -> JsonSchemaValue:
        # ``_serialize`` changes when the fields are built, not what they are: describe the
        # serialized model by its fields (not as "any", which a wrap serializer implies).
        if core_schema.get("type") == "model" and "serialization" in core_schema:
            fields = {key: value for key, value in core_schema.items() if key != "serialization"}
            core_schema = cast("CoreSchema", fields)
        return handler(core_schema)


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


def parse_callback(body: Body, *, defer_items: bool = True) -> CallbackPayload:
    """Parse verified callback bytes into the right payload model.

    Chooses :class:`BatchCallbackPayload` or :class:`RunCallbackPayload` from ``event`` (or, in
    the older shape without ``event``, from ``batch_id``/``run_id``), and
    :class:`GenericCallbackPayload` for any other event. Bytes that are not a JSON object of
    that shape raise :class:`~runflow_callbacks.errors.InvalidPayloadError`.

    A batch body as Runflow writes it (``event`` first) is validated without building its
    items, which :class:`BatchOutput` builds on first use: parsing a large batch costs a
    fraction of building it, and code that only routes, deduplicates or stores the callback
    never pays for the items. Reading them later costs that build plus the parse already done;
    pass ``defer_items=False`` to build everything now when you know you will read them all.
    """
    if type(body) is not bytes:
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(
                f"parse_callback() takes the verified body bytes, not {type(body).__name__}"
            )
    if defer_items and body.startswith(_BATCH_EVENT_FIRST):
        payload = _parse_batch_deferring_items(body)
        if payload is not None:
            return payload
    data = _load_json(body)
    if not isinstance(data, dict):
        raise InvalidPayloadError(
            f"a callback body must be a JSON object, not {_JSON_NAMES.get(type(data), 'null')}"
        )
    try:
        return _MODELS_BY_KIND[_payload_kind(data)].model_validate(data)
    except ValidationError as exc:
        raise _summarize(exc) from None


def _load_json(body: bytes | bytearray) -> Any:
    # One pass of pydantic-core's JSON parser (keys interned, values never echoed in errors).
    try:
        return from_json(body, cache_strings="keys")
    except ValueError as exc:
        return _loads_leniently(body, exc)


def _loads_leniently(body: bytes | bytearray, error: ValueError) -> Any:
    # Python's json (what Runflow writes with) also reads escaped lone surrogates such as
    # "\udcff", which pydantic-core refuses; a verified body must not be lost over that. It is
    # given text decoded as strict UTF-8: handed bytes, json.loads would detect UTF-16 and
    # UTF-32 and accept them, and a callback body is UTF-8 JSON or it is a 400.
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayloadError(f"callback body is not valid JSON (not UTF-8): {error}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidPayloadError(f"callback body is not valid JSON: {error}") from None


# --- batch callbacks, items built on first use --------------------------------------------
#
# Building a large batch's items as Python objects is most of what parsing it costs. For a body
# that announces a batch event, pydantic validates the envelope straight from the JSON bytes
# with a model that reads ``output.items`` only as "an array of objects" (Rust-side, nothing
# built in Python), and ``BatchOutput`` builds the items from the kept body on first use.
# Anything unusual (another shape of items, invalid JSON, a duplicated ``event``) falls back
# to the eager path, which reports errors exactly as before.

# Runflow writes ``event`` first, with ``json.dumps``' separators; a body that starts any
# other way takes the eager path.
_BATCH_EVENT_FIRST: Final = b'{"event": "batch.'


class _AnyObject(TypedDict):
    """Accepts any JSON object and keeps none of it (extra keys are ignored)."""


class _BatchCounts(_Model):
    model_config = ConfigDict(extra="ignore")

    items: list[_AnyObject] | None = None
    succeeded: int | None = None
    failed: int | None = None
    cancelled: int | None = None
    total: int | None = None


_BatchEnvelope = create_model(
    "_BatchEnvelope",
    __base__=BatchCallbackPayload,
    output=(_BatchCounts | None, None),
)
# Called directly: model_validate_json's keyword handling is a measurable part of a 1 KiB parse.
_ENVELOPE_VALIDATOR: Final = _BatchEnvelope.__pydantic_validator__


def _parse_batch_deferring_items(body: bytes) -> BatchCallbackPayload | None:
    try:
        envelope: BatchCallbackPayload = _ENVELOPE_VALIDATOR.validate_json(body)
    except ValidationError:
        return None
    if envelope.event not in BATCH_EVENTS:  # the last "event" key is the one that counts
        return None
    # The instances pydantic just validated become the public models in place (all are plain
    # pydantic models, with the same instance layout) rather than being copied field by field:
    # the envelope differs from BatchCallbackPayload only in the type of ``output``, and the
    # counts from BatchOutput only in not having built the items. ``items`` leaves
    # ``__dict__``, so that reading it reaches ``BatchOutput.__getattr__``.
    counts = envelope.output
    if counts is not None:
        del counts.__dict__["items"]
        object.__setattr__(counts, "__pydantic_private__", {"_deferred_body": body})
        object.__setattr__(counts, "__class__", BatchOutput)
    object.__setattr__(envelope, "__class__", BatchCallbackPayload)
    return envelope


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
