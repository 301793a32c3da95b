"""Callback fields kept as verified JSON bytes and built on first use (private).

Two pieces, used by :mod:`runflow_callbacks.models`:

* :class:`DeferredField`, a base for the public models that may hold one field (a batch's
  ``items``, a run's ``output``) as the raw JSON of the verified body, built the first time
  anything reads it;
* :func:`skim_batch` and :func:`skim_run`, a compiled pass of msgspec over the whole body that
  checks it is JSON and finds the exact bytes of that field without building them, so that
  pydantic validates the envelope alone.

Nothing here decides what a body means: :func:`runflow_callbacks.models.parse_callback` takes
a skim only when every check passes and otherwise parses the body eagerly, as it always did.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import msgspec
from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer
from pydantic_core import from_json

from runflow_callbacks.errors import InvalidPayloadError

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from pydantic import GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema
    from typing_extensions import Self

__all__ = ["DeferredField", "defer", "deferred_raw", "load_json", "skim_batch", "skim_run"]


# --- JSON, the way the eager path reads it --------------------------------------------------


def load_json(body: bytes | bytearray) -> Any:
    """One pass of pydantic-core's JSON parser (keys interned, values never echoed in errors)."""
    try:
        return from_json(body, cache_strings="keys")
    except ValueError as exc:
        return _loads_leniently(body, exc)


def _loads_leniently(body: bytes | bytearray, error: ValueError) -> Any:
    # Python's json (what Runflow writes with) also reads escaped lone surrogates such as
    # "\udcff", which pydantic-core refuses, and nesting deeper than pydantic-core's 200
    # levels; a verified body must not be lost over that. It is given text decoded as strict
    # UTF-8: handed bytes, json.loads would detect UTF-16 and UTF-32 and accept them, and a
    # callback body is UTF-8 JSON or it is a 400.
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayloadError(f"callback body is not valid JSON (not UTF-8): {error}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidPayloadError(f"callback body is not valid JSON: {error}") from None


# --- a field held as raw JSON ----------------------------------------------------------------
#
# Two behaviours of pydantic that its API does not promise are relied on here, each pinned by
# tests/test_models_deferred.py (test_the_pydantic_behaviours_deferral_relies_on):
#
# 1. a validated model keeps its field values in the instance ``__dict__`` and reads them from
#    there, so a field taken out of it reaches ``__getattr__``;
# 2. ``__pydantic_private__`` is None on a model without private attributes, and pydantic reads
#    it only in ``__eq__``, ``__getstate__``, ``__copy__`` and ``__deepcopy__`` (all of which
#    build the field first here). Declaring a private attribute instead would make pydantic
#    run a Python hook after every validation, eager ones included: about 1 µs per model.
#
# The instance itself is always made by the public class's own validator; nothing swaps a
# ``__class__`` or builds a core schema by hand.

_KEY: Final = "_deferred_field"
# Builds are rare and short; one lock keeps two threads from building the same field at once
# (the second would overwrite whatever was assigned after the first).
_BUILDING: Final = threading.Lock()


def defer(model: DeferredField, name: str, raw: msgspec.Raw) -> None:
    """Hold ``model``'s field ``name`` as ``raw`` (its JSON bytes) until first use."""
    del model.__dict__[name]
    object.__setattr__(model, "__pydantic_private__", {_KEY: (name, raw)})


def deferred_raw(model: BaseModel) -> bytes | None:
    """The JSON bytes ``model`` still holds for a field (None once built, or never deferred)."""
    private = model.__pydantic_private__
    if not private or _KEY not in private:
        return None
    return bytes(private[_KEY][1])


def _load_deferred(data: bytes) -> Any:
    try:
        return load_json(data)
    except InvalidPayloadError:
        # The bytes passed the skim, so they are JSON: only nesting deeper than pydantic-core's
        # limit, read by json.loads from a deeper stack than the one the body was received on,
        # fails here. Read them again from the bottom of a fresh stack.
        result: list[Any] = []
        failure: list[BaseException] = []

        def load() -> None:
            try:
                result.append(load_json(data))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
                failure.append(exc)

        thread = threading.Thread(target=load, name="runflow-callbacks-deferred-build")
        thread.start()
        thread.join()
        if failure:
            raise failure[0] from None
        return result[0]


class DeferredField(BaseModel):
    """A model that may hold one field as JSON bytes, built the first time anything uses it.

    Reading the field, assigning or deleting any field, comparing, iterating, copying,
    pickling, ``repr`` and every dump build it first; the other fields, ``model_extra`` and
    ``model_fields_set`` are exact from the start and build nothing. Until then the verified
    body the bytes belong to stays alive.
    """

    def _build_deferred(self) -> None:
        if self.__pydantic_private__ is not None:
            with _BUILDING:
                self._build_deferred_locked()

    def _build_deferred_locked(self) -> None:
        private = self.__pydantic_private__
        if private is None:  # another thread built it meanwhile
            return
        name, raw = private[_KEY]
        value = _load_deferred(bytes(raw))
        fields = self.__dict__
        # ``__dict__`` is swapped whole, in the declared field order (what repr and the dumps
        # follow), so that another thread sees the old state or the new, never half of it.
        built = {key: value if key == name else fields[key] for key in type(self).model_fields}
        object.__setattr__(self, "__dict__", built)
        object.__setattr__(self, "__pydantic_private__", None)

    if not TYPE_CHECKING:  # keep static attribute checking strict

        def __getattr__(self, name: str) -> Any:
            private = self.__pydantic_private__
            if private is not None and _KEY in private and private[_KEY][0] == name:
                self._build_deferred()
                return getattr(self, name)
            return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._build_deferred()
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if not name.startswith("_"):
            self._build_deferred()
        super().__delattr__(name)

    def __eq__(self, other: object) -> bool:
        self._build_deferred()
        if isinstance(other, DeferredField):
            other._build_deferred()
        return super().__eq__(other)

    # Compared by value and mutable, so unhashable, as any non-frozen pydantic model.
    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Generator[tuple[str, Any], None, None]:
        self._build_deferred()
        return super().__iter__()

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        self._build_deferred()
        return super().__repr_args__()

    def __getstate__(self) -> dict[Any, Any]:
        self._build_deferred()
        return super().__getstate__()

    def __copy__(self) -> Self:
        self._build_deferred()
        return super().__copy__()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        self._build_deferred()
        return super().__deepcopy__(memo)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        self._build_deferred()
        return handler(self)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler, /
    ) -> JsonSchemaValue:
        # ``_serialize`` changes when the field is built, not what it is: describe the
        # serialized model by its fields (not as "any", which a wrap serializer implies).
        if core_schema.get("type") == "model" and "serialization" in core_schema:
            fields = {key: value for key, value in core_schema.items() if key != "serialization"}
            core_schema = cast("CoreSchema", fields)
        return handler(core_schema)


# --- the skim ----------------------------------------------------------------------------------
#
# msgspec decodes the whole body into a Struct that declares only the deferred field, as
# ``Raw``: every other key, and the field's own content, is skipped by compiled code that
# checks the JSON syntax and builds nothing. Two of msgspec's behaviours shape the checks:
#
# * it does not check UTF-8 inside what it skips, so only an ASCII body is skimmed (Runflow
#   writes ``json.dumps``' ASCII escapes; ``isascii`` runs at memory speed);
# * it refuses ``NaN``/``Infinity`` and escaped lone surrogates, which the eager path accepts:
#   such bodies fail the skim and are parsed eagerly.
#
# ``Raw`` gives the field's bytes (the last occurrence, as JSON's last duplicate key wins) but
# not where they are. The head Runflow writes (``event`` first, ``json.dumps`` separators) is
# matched to find where the *first* occurrence starts, and the body must hold the Raw's bytes
# exactly there: a JSON array or object ends where its own text says, so equal bytes at that
# position are that value, whatever duplicates follow. Anything else is not skimmed.


class _BatchOutputSkim(msgspec.Struct):
    items: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _BatchSkim(msgspec.Struct):
    output: _BatchOutputSkim | msgspec.UnsetType | None = msgspec.UNSET


class _RunSkim(msgspec.Struct):
    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_SkimT = TypeVar("_SkimT", _BatchSkim, _RunSkim)
_FRAMES: Final = 5  # 4 measured on CPython 3.11, plus one to spare
_BATCH_DECODER: Final = msgspec.json.Decoder(_BatchSkim)
_RUN_DECODER: Final = msgspec.json.Decoder(_RunSkim)
# Strings without quotes or escapes only, so the positions found are the JSON's own structure.
_BATCH_HEAD: Final = re.compile(
    rb'\{"event": "batch\.[a-z_]+", "batch_id": "[^"\\]*"(?:, "status": "[^"\\]*")?, '
    rb'"output": \{"items": '
)
_RUN_HEAD: Final = re.compile(
    rb'\{"event": "run\.[a-z_]+", "run_id": "[^"\\]*"(?:, "status": "[^"\\]*")?, "output": '
)
_ARRAY: Final = ord("[")
_CONTAINERS: Final = (_ARRAY, ord("{"))


def skim_batch(body: bytes) -> tuple[bytes, msgspec.Raw] | None:
    """The body with ``output.items`` replaced by ``[]``, and the items' bytes; or None."""
    head = _BATCH_HEAD.match(body)
    if head is None or not body.isascii():
        return None
    try:
        output = _decode(_BATCH_DECODER, body).output
    except (msgspec.MsgspecError, RecursionError):
        return None
    if output is None or output is msgspec.UNSET:
        return None
    items = output.items
    if items is msgspec.UNSET or memoryview(items)[0] != _ARRAY:
        return None
    return _split(body, head.end(), items, b"[]")


def skim_run(body: bytes) -> tuple[bytes, msgspec.Raw] | None:
    """The body with ``output`` replaced by ``null``, and the output's bytes; or None.

    Only an object or array output is worth keeping raw (and ends where its text says).
    """
    head = _RUN_HEAD.match(body)
    if head is None or not body.isascii():
        return None
    try:
        output = _decode(_RUN_DECODER, body).output
    except (msgspec.MsgspecError, RecursionError):
        return None
    if output is msgspec.UNSET or memoryview(output)[0] not in _CONTAINERS:
        return None
    return _split(body, head.end(), output, b"null")


def _decode(decoder: msgspec.json.Decoder[_SkimT], body: bytes, frames: int = _FRAMES) -> _SkimT:
    # msgspec and json.loads both count nesting against Python's recursion limit, so how deep
    # a body they accept depends on the caller's stack; the eager path reaches json.loads
    # (for nesting beyond pydantic-core's 200 levels) through more frames than the skim
    # reaches msgspec. Calling msgspec that many frames deeper keeps the deepest body the skim
    # accepts no deeper than what the eager path accepts at the same call site; anything
    # deeper raises RecursionError and is parsed eagerly (test_nesting_at_the_recursion_limit).
    if frames:
        return _decode(decoder, body, frames - 1)
    return decoder.decode(body)


def _split(
    body: bytes, start: int, raw: msgspec.Raw, placeholder: bytes
) -> tuple[bytes, msgspec.Raw] | None:
    if not body.startswith(raw, start):  # any buffer: one memcmp, no copy
        return None
    return body[:start] + placeholder + body[start + len(raw) :], raw
