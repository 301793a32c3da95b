"""Rejected requests kept in the store, and replayed once the secrets are right.

A receiver with a store and ``keep_rejected=N`` (``serve --keep-rejected N``) keeps the last
``N`` requests it refused (400, 401, 408, 413): when, why (the error code), the path, the
headers without credentials and the body up to ``keep_rejected_bytes / N`` bytes each. They are
gathered in memory (a ring of ``N``: a flood replaces the oldest, it never grows) and written
with the rejection counts, in one store call every few seconds at most, so a flood of forged
requests still costs no store write per request.

:func:`replay` verifies a kept request again, with the secrets configured *now*, and hands
those that verify to the same exactly-once engine as a delivery (recorded under their key, run
once): what turns an hour of callbacks refused under a wrong secret into one command,
``runflow-callbacks inbox replay-rejected --all``.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from runflow_callbacks.defaults import DEFAULT_KEEP_REJECTED_BYTES
from runflow_callbacks.errors import ConfigurationError, OverloadedError, RunflowCallbackError
from runflow_callbacks.reader import CallbackReader
from runflow_callbacks.stores import RejectedRequest, check_limit

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from runflow_callbacks.processing import CallbackProcessor
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import Verifier

__all__ = [
    "DEFAULT_KEEP_REJECTED_BYTES",
    "RejectedKeeper",
    "Replayed",
    "kept_headers",
    "replay",
]

#: Headers whose value may be a credential: never kept.
_CREDENTIALS: Final = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|session|credential",
    re.IGNORECASE,
)
_MAX_HEADERS: Final = 64
_MAX_HEADER_CHARS: Final = 2048


def kept_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers of a rejected request as kept: lower-case names, latin-1 values, without
    any header that may carry a credential (``Authorization``, ``Cookie``, ``X-Api-Key``,
    anything named like a token, secret, password or session), at most 64 of them, each value
    at most 2,048 characters; a repeated header is kept once, its values joined by ``", "``.
    ``Runflow-Signature`` is kept: it is no secret, and a replay needs it.
    """
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        if _CREDENTIALS.search(name):
            continue
        value = value_bytes.decode("latin-1")[:_MAX_HEADER_CHARS]
        if name in headers:
            headers[name] = f"{headers[name]}, {value}"[:_MAX_HEADER_CHARS]
        elif len(headers) < _MAX_HEADERS:
            headers[name] = value
    return headers


class RejectedKeeper:
    """The newest ``keep`` rejected requests, gathered in memory until written to the store.

    Each body is kept up to ``max_bytes // keep`` bytes, so the ring holds at most
    ``max_bytes`` of bodies whatever the flood; a 503 for overload is not kept (it is load
    shedding, not a refusal of the request).
    """

    __slots__ = ("_pending", "body_bytes", "keep")

    def __init__(self, keep: int, *, max_bytes: int = DEFAULT_KEEP_REJECTED_BYTES) -> None:
        check_limit(keep, name="keep_rejected")
        given: object = max_bytes  # checked as any value: callers may not be typed
        if not isinstance(given, int) or isinstance(given, bool) or given < 0:
            raise ConfigurationError(
                f"keep_rejected_bytes must be a number of bytes >= 0, not {given!r}"
            )
        self.keep = keep
        #: The most bytes of one body kept.
        self.body_bytes = max_bytes // keep
        self._pending: collections.deque[RejectedRequest] = collections.deque(maxlen=keep)

    def add(
        self,
        error: RunflowCallbackError,
        *,
        path: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        reader: CallbackReader | None,
        at: datetime,
    ) -> None:
        """Keep one refused request (cheap: a bounded slice of its body, no I/O)."""
        if isinstance(error, OverloadedError):
            return
        body = b"" if reader is None else reader.unverified_body()
        self._pending.append(
            RejectedRequest(
                received_at=at,
                reason=error.code,
                path=path,
                headers=kept_headers(raw_headers),
                body=body[: self.body_bytes],
                body_bytes=len(body) if reader is None else max(reader.received, len(body)),
            )
        )

    def __len__(self) -> int:
        return len(self._pending)

    def take(self) -> list[RejectedRequest]:
        """The requests gathered since the last call, oldest first (the ring is emptied)."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def give_back(self, requests: list[RejectedRequest]) -> None:
        """Put back requests a failed write could not keep (newer ones win the ring)."""
        newer = self.take()
        self._pending.extend(requests)
        self._pending.extend(newer)


ReplayStatus = Literal["replayed", "unverified", "truncated", "unknown"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What :func:`replay` made of one kept request.

    ``status`` is ``replayed`` when it verified and went through the engine (``outcome``
    says how: processed, recorded, duplicate...), ``unverified`` when it still does not verify
    (``reason`` is the error code), ``truncated`` when only part of its body was kept, and
    ``unknown`` when no request is kept under that id.
    """

    request_id: str
    status: ReplayStatus
    reason: str | None = None
    outcome: str | None = None
    key: str | None = None


async def replay(
    store: CallbackStore,
    request_id: str,
    *,
    verifier: Verifier,
    processor: CallbackProcessor,
    run: bool,
) -> Replayed:
    """Verify the kept request ``request_id`` again and, if it verifies now, process it exactly
    once: recorded under its idempotency key with the time it first arrived and, with ``run``,
    its handler run now (``processor.handle``; without, it is recorded for an inbox worker).

    Marked replayed in the store once the engine took it (a duplicate too: it was received
    before). The reader's checks are the receiver's own (``processor.options``).
    """
    request = await store.get_rejected(request_id)
    if request is None:
        return Replayed(request_id, "unknown")
    if request.truncated:
        return Replayed(request_id, "truncated", reason=request.reason)
    raw = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()
    ]
    try:
        reader = CallbackReader(raw, verifier=verifier, options=processor.options)
        reader.feed(request.body)
        context = reader.finish()
    except RunflowCallbackError as error:
        return Replayed(request_id, "unverified", reason=error.code)
    context = dataclasses.replace(context, received_at=request.received_at)
    outcome = await (processor.handle(context) if run else processor.record(context))
    key = outcome.key or processor.key_of(context)
    await store.mark_replayed(request_id, key=key, now=processor.options.clock())
    return Replayed(request_id, "replayed", outcome=outcome.status, key=key)
