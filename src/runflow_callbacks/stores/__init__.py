"""Exactly-once stores: one Protocol, four backends (memory, SQLite, Redis, PostgreSQL).

Runflow delivers at least once and gives up after a few attempts, so a receiver records every
verified callback durably *before* answering 2xx, runs its handler once per idempotency key,
and keeps failures for a retry. A store is the durable half of that contract; the engine in
:mod:`runflow_callbacks.processing` drives it.

Open one with :func:`open_store`::

    store = open_store("sqlite:///./runflow-callbacks.db")   # relative path
    store = open_store("sqlite:////var/lib/app/callbacks.db")  # absolute path
    store = open_store("redis://localhost:6379/0")
    store = open_store("postgresql://user@db/app")            # also postgres://
    store = open_store("memory://")                           # tests: one process only
    async with store:
        ...

Opening does no I/O: tables (or keys) are created on first use, under ``namespace`` (the table
name for SQL backends, the key prefix for Redis) so that several apps or tests can share one
server. :func:`mask_url` shows a store URL without its password (store reprs and errors do so).

Semantics (identical on every backend, tested by one shared suite):

=====================  ==========================================================================
operation              effect
=====================  ==========================================================================
``record``             durably stores a new callback in state ``received`` (body bytes exactly as
                       sent, headers, matched secret, request id, received time); a callback whose
                       key exists already is a duplicate: only its ``deliveries`` count grows
                       (a ``"reconcile"`` source never counts as a delivery)
``record_and_claim``   ``record`` then ``claim`` as one atomic step (one transaction, script or
                       statement), answering only an :class:`Admission` (inserted, state,
                       attempts, token): a new key is recorded and a duplicate counted as by
                       ``record``, and an ``unhandled`` one becomes ``received`` (due now); then,
                       unless ``lease`` is None (record only), the lease is taken if ``claim``
                       would take it
``claim``              takes a lease on a ``received``, ``failed`` or ``unhandled`` callback, or on
                       a ``processing`` one whose lease expired (its holder crashed); it returns a
                       fencing token and bumps ``attempts``. At most one caller holds a live lease
``renew``              extends a live lease (``now + lease``), only with the current token: the
                       heartbeat of a long handler
``complete``           ``processing`` → ``processed``, only with the current token
``fail``               ``processing`` → ``failed`` (with ``retry_at``) or ``dead``, only with the
                       current token; the error text is kept, never the payload
``release``            ``processing`` → ``unhandled``, only with the current token: no handler
                       takes the event. The lease ends, ``attempts`` drops by one (the claim ran
                       no handler) and the callback has no due time until it arrives again
``claim_due``          claims up to ``limit`` callbacks the inbox worker should run now, earliest
                       due first: received (due from ``received_at``), failed (due at
                       ``next_attempt_at``) and processing with an expired lease; never
                       ``unhandled`` ones (retrying them changes nothing until a handler exists)
``reset_for_retry``    ``failed``/``dead``/``received``/``unhandled`` → ``received`` with
                       ``attempts = 0``
``get``                the record of one key (None when unknown)
``list_callbacks``     records in the order they were first received (``limit``, ``state``)
``stats``              distinct, duplicates, per-state, reconciled and rejected counts
``note_rejected``      counts a callback the receiver refused (bad signature, bad body...)
``prune``              retention: removes the body and headers of ``processed`` and ``dead``
                       callbacks last updated before a time, keeping a *tombstone* (key, state,
                       counts, times, ``pruned_at``) so that a later delivery is still a
                       duplicate; removes tombstones last updated before a (much older) time
``keep_rejected``      keeps rejected requests (time, reason, headers without credentials, the
                       body up to a bound), only the newest ``keep`` of them
``list_rejected``      the kept rejected requests, newest first (``get_rejected``: one by id)
``mark_replayed``      notes that a kept rejected request was verified and recorded since
=====================  ==========================================================================

``reset_for_retry`` with ``force=True`` also takes a ``processed`` callback (``inbox retry
--force``): it becomes ``received`` again, keeping its attempts, so the run is one more attempt.
A pruned callback (no body left) is never reset.

A stale token (its lease expired and someone else claimed the callback since) can neither
complete, fail, renew nor release it: those return False and change nothing. ``processed`` and
``dead`` are final for ``claim``; only ``reset_for_retry`` (``runflow-callbacks inbox retry``)
brings a dead callback back. Times are always passed in (``now``), so a clock can be injected;
stores keep them to the microsecond, in UTC.

Which callbacks are "the same" is the engine's decision, not the store's: the idempotency key
policy (:func:`~runflow_callbacks.keys.default_key`, re-exported here) lives in
:mod:`runflow_callbacks.keys`, and the engine hands every store a finished key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from runflow_callbacks._time import aware
from runflow_callbacks.defaults import DEFAULT_NAMESPACE
from runflow_callbacks.errors import ConfigurationError, UnknownCallbackError
from runflow_callbacks.keys import KeyFunction, check_key, default_key

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "DEFAULT_NAMESPACE",
    "PRUNABLE_STATES",
    "STATES",
    "Admission",
    "CallbackStore",
    "Claim",
    "IncomingCallback",
    "KeyFunction",
    "Pruned",
    "Recorded",
    "RejectedRequest",
    "Source",
    "State",
    "StoreStats",
    "StoredCallback",
    "UnknownCallbackError",
    "aware",
    "check_key",
    "default_key",
    "mask_url",
    "open_store",
]

State = Literal["received", "processing", "processed", "failed", "dead", "unhandled"]
"""Where a callback stands: ``received``, ``processing``, then ``processed``/``failed``/``dead``,
or ``unhandled`` (claimed, but no handler takes its event: it waits for its next arrival)."""
STATES: Final[tuple[State, ...]] = (
    "received",
    "processing",
    "processed",
    "failed",
    "dead",
    "unhandled",
)
#: The states ``prune`` may take the body of: finished, never to run again by themselves.
PRUNABLE_STATES: Final[tuple[State, ...]] = ("processed", "dead")
Source = Literal["delivery", "reconcile"]
"""How a callback reached the store: delivered by Runflow, or read back from its history."""

_NAMESPACE: Final = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def check_lease(lease: object) -> timedelta:
    """A lease must be a positive duration."""
    if not isinstance(lease, timedelta) or lease <= timedelta(0):
        raise ConfigurationError(f"lease must be a positive timedelta, not {lease!r}")
    return lease


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingCallback:
    """A verified callback about to be recorded.

    The engine builds it once per callback from the handler's
    :class:`~runflow_callbacks.context.CallbackContext`, with the key it computed. ``headers``
    holds the Runflow headers as sent (the signature included: it is not a secret, and lets an
    operator re-verify the bytes).
    """

    key: str
    kind: str
    subject_id: str | None
    event: str | None
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    secret_id: str | None
    secret_label: str | None
    request_id: str | None
    received_at: datetime
    source: Source = "delivery"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCallback(IncomingCallback):
    """A callback as the store holds it: what was recorded plus where it stands.

    ``attempts`` counts handler runs (claims), ``deliveries`` how often Runflow delivered it
    (1 + duplicates; 0 when it only came from reconciliation). ``last_error`` is the text of the
    last handler error (never the payload). The body and headers are left out of ``repr``.
    """

    state: State
    attempts: int
    deliveries: int
    last_error: str | None
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    processed_at: datetime | None
    updated_at: datetime
    pruned_at: datetime | None = None

    @property
    def pruned(self) -> bool:
        """True for a tombstone: retention removed its body and headers (``prune``)."""
        return self.pruned_at is not None

    @property
    def duplicates(self) -> int:
        """How many deliveries came after the first."""
        return max(self.deliveries - 1, 0)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary (no body, no headers): what ``inbox list --json`` prints."""

        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "key": self.key,
            "kind": self.kind,
            "subject_id": self.subject_id,
            "event": self.event,
            "state": self.state,
            "source": self.source,
            "attempts": self.attempts,
            "deliveries": self.deliveries,
            "last_error": self.last_error,
            "secret_label": self.secret_label,
            "request_id": self.request_id,
            "body_bytes": len(self.body),
            "received_at": iso(self.received_at),
            "next_attempt_at": iso(self.next_attempt_at),
            "lease_expires_at": iso(self.lease_expires_at),
            "processed_at": iso(self.processed_at),
            "updated_at": iso(self.updated_at),
            "pruned_at": iso(self.pruned_at),
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    """The answer of :meth:`CallbackStore.record`: the stored callback, and whether it is new."""

    record: StoredCallback
    inserted: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of :meth:`CallbackStore.claim`.

    ``record`` is the callback as it stands after the call. ``token`` is set when the lease was
    acquired (pass it to ``complete``/``fail``); otherwise ``record.state`` says why not:
    ``processed``, ``dead``, or ``processing`` under someone else's live lease.
    """

    record: StoredCallback
    token: str | None = field(default=None, repr=False)

    @property
    def acquired(self) -> bool:
        """True when this caller now holds the lease."""
        return self.token is not None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`CallbackStore.record_and_claim`: only what the engine acts on.

    ``inserted`` is True when this call recorded the key for the first time. ``state`` and
    ``attempts`` are the callback's after the call; when the lease was taken, ``attempts`` is
    the number of this run (1 on a first run) and ``token`` the fencing token to pass to
    ``complete``/``fail``/``renew``/``release``. Otherwise ``state`` says why not: ``received``
    (record only), ``processing`` under someone else's live lease, ``processed`` or ``dead``.
    """

    inserted: bool
    state: State
    attempts: int
    token: str | None = field(default=None, repr=False)

    @property
    def acquired(self) -> bool:
        """True when this caller now holds the lease."""
        return self.token is not None


@dataclass(frozen=True, slots=True)
class Pruned:
    """The answer of :meth:`CallbackStore.prune`: callbacks made tombstones, tombstones removed."""

    pruned: int = 0
    removed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedRequest:
    """A request the receiver refused (400, 401, 408, 413), kept to look at and replay.

    ``headers`` are the request's headers without credentials (see
    :mod:`runflow_callbacks.rejected`); ``body`` holds at most a bounded prefix of the body
    read, ``body_bytes`` how many bytes were read (``truncated`` when they differ: such a body
    can be looked at, not replayed). ``id`` is given by the store (``keep_rejected``);
    ``replayed_at`` and ``replayed_key`` are set by ``mark_replayed`` once a replay verified it
    and recorded it under that key.
    """

    received_at: datetime
    reason: str
    path: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    body_bytes: int
    id: str | None = None
    replayed_at: datetime | None = None
    replayed_key: str | None = None

    @property
    def truncated(self) -> bool:
        """True when only a prefix of the body read was kept."""
        return len(self.body) < self.body_bytes

    def to_json(self, *, body: bool = False) -> dict[str, object]:
        """A JSON-ready summary (``inbox rejected --json``); the body only when asked."""
        shown: dict[str, object] = {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "reason": self.reason,
            "path": self.path,
            "body_bytes": self.body_bytes,
            "kept_bytes": len(self.body),
            "truncated": self.truncated,
            "request_id": self.headers.get("runflow-request-id"),
            "replayed_at": None if self.replayed_at is None else self.replayed_at.isoformat(),
            "replayed_key": self.replayed_key,
        }
        if body:
            shown["headers"] = dict(self.headers)
            shown["body"] = self.body.decode("utf-8", errors="replace")
        return shown


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts over everything a store holds.

    ``received`` counts distinct callbacks; ``duplicates`` the deliveries after the first;
    ``reconciled`` the callbacks first recorded by reconciliation; ``rejected`` what the
    receiver refused (bumped with :meth:`CallbackStore.note_rejected`); the rest count
    callbacks by current state.
    """

    received: int = 0
    duplicates: int = 0
    pending: int = 0
    processing: int = 0
    processed: int = 0
    failed: int = 0
    dead: int = 0
    unhandled: int = 0
    reconciled: int = 0
    rejected: int = 0

    def to_json(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@runtime_checkable
class CallbackStore(Protocol):
    """What every backend implements. All times are timezone-aware; see the module docstring."""

    async def record(self, incoming: IncomingCallback) -> Recorded:
        """Durably store ``incoming``, or count it as a duplicate of the same key."""
        ...

    async def record_and_claim(
        self, incoming: IncomingCallback, *, now: datetime, lease: timedelta | None
    ) -> Admission:
        """Record ``incoming`` (or count it as a duplicate) and, unless ``lease`` is None, claim
        it for ``lease``: one atomic step, as ``record`` then ``claim`` would.

        A duplicate never changes the stored body or headers. An ``unhandled`` callback becomes
        ``received`` (due ``now``) first, so a new arrival runs once a handler takes its event.
        """
        ...

    async def claim(self, key: str, *, now: datetime, lease: timedelta) -> Claim:
        """Try to take the lease on ``key``; raises :class:`UnknownCallbackError` if absent."""
        ...

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        """Mark ``key`` processed if ``token`` still holds it; False (no change) otherwise."""
        ...

    async def fail(
        self,
        key: str,
        token: str,
        *,
        now: datetime,
        error: str,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        """Record a handler failure if ``token`` still holds ``key``; False otherwise."""
        ...

    async def release(self, key: str, token: str, *, now: datetime) -> bool:
        """Give ``key`` back as ``unhandled`` if ``token`` still holds it; False otherwise.

        For a claim no handler takes: the lease and due time end and ``attempts`` drops by
        one. Raises :class:`UnknownCallbackError` when ``key`` is absent, as ``complete`` does.
        """
        ...

    async def renew(self, key: str, token: str, *, now: datetime, lease: timedelta) -> bool:
        """Extend the lease of ``token`` on ``key`` to ``now + lease``; False (no change) when
        ``token`` no longer holds it."""
        ...

    async def claim_due(self, *, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
        """Claim up to ``limit`` callbacks due for a (re)try, earliest due first."""
        ...

    async def get(self, key: str) -> StoredCallback | None:
        """The callback recorded under ``key``, or None."""
        ...

    async def list_callbacks(
        self,
        *,
        limit: int | None = None,
        state: State | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoredCallback]:
        """Callbacks in the order they were first received (all unless ``limit``), only those
        in ``state``, of ``event`` and first received at ``since`` or later and before
        ``until`` when given."""
        ...

    async def stats(self) -> StoreStats:
        """Counts over the whole store."""
        ...

    async def note_rejected(self, count: int = 1) -> None:
        """Count ``count`` callbacks the receiver rejected (bad signature, bad body...)."""
        ...

    async def reset_for_retry(self, key: str, *, now: datetime, force: bool = False) -> bool:
        """Make a failed, dead, received or unhandled callback due again with zero attempts;
        with ``force``, a processed one too (its attempts kept: the run is one more attempt).

        False (no change) when it is processed (without ``force``), held under a live lease or
        pruned; raises :class:`UnknownCallbackError` when absent.
        """
        ...

    async def prune(
        self,
        *,
        before: datetime,
        now: datetime,
        states: Collection[State] = PRUNABLE_STATES,
        tombstones_before: datetime | None = None,
    ) -> Pruned:
        """Retention: make tombstones of the callbacks in ``states`` (``processed`` and/or
        ``dead``) last updated before ``before`` (body and headers removed, ``pruned_at =
        now``), then remove the tombstones last updated before ``tombstones_before``."""
        ...

    async def keep_rejected(self, requests: Sequence[RejectedRequest], *, keep: int) -> None:
        """Keep ``requests`` (in order, each given a new id) and only the newest ``keep`` of
        all those kept."""
        ...

    async def list_rejected(self, *, limit: int | None = None) -> list[RejectedRequest]:
        """The kept rejected requests, newest first."""
        ...

    async def get_rejected(self, request_id: str) -> RejectedRequest | None:
        """One kept rejected request by its id, or None."""
        ...

    async def mark_replayed(self, request_id: str, *, key: str, now: datetime) -> bool:
        """Note that ``request_id`` verified and was recorded under ``key``; False when it is
        no longer kept."""
        ...

    async def ready(self) -> None:
        """Raise :class:`~runflow_callbacks.errors.StoreError` unless the store can record a
        callback now: one write that changes nothing (``/readyz``, and ``serve`` at start)."""
        ...

    async def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class StoreBase:
    """Shared plumbing of the backends: ``async with`` support and argument checks."""

    async def close(self) -> None:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def check_limit(limit: object, *, name: str = "limit") -> int | None:
    """A listing or claiming limit must be a positive int (None means no limit)."""
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"{name} must be a positive int, not {limit!r}")
    return limit


def check_state(state: object) -> State | None:
    """``state`` must be one of :data:`STATES` (or None)."""
    if state is not None and state not in STATES:
        raise ConfigurationError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    return state


def check_prunable(states: object) -> tuple[State, ...]:
    """``prune`` takes a non-empty collection of :data:`PRUNABLE_STATES`."""
    if isinstance(states, str) or not states:
        raise ConfigurationError("states must be a non-empty collection of states")
    chosen = tuple(dict.fromkeys(states))  # type: ignore[call-overload]
    for state in chosen:
        if state not in PRUNABLE_STATES:
            raise ConfigurationError(
                f"only {' and '.join(PRUNABLE_STATES)} callbacks can be pruned, not {state!r}"
            )
    return chosen


def check_prune(
    before: datetime, now: datetime, states: object, tombstones_before: datetime | None
) -> tuple[datetime, datetime, tuple[State, ...], datetime | None]:
    """``prune``'s arguments checked: the times aware (in UTC), the states prunable."""
    return (
        aware(before, name="before"),
        aware(now),
        check_prunable(states),
        None if tombstones_before is None else aware(tombstones_before, name="tombstones_before"),
    )


#: The largest id a store gives a kept rejected request (a signed 64-bit integer).
_MAX_REJECTED_ID: Final = 2**63 - 1


def rejected_id(request_id: object) -> int | None:
    """The number a kept rejected request's id names, or None for any id no store gives: not
    written exactly as ``str(int)`` writes it, or outside 1 to 2**63 - 1."""
    if not isinstance(request_id, str) or not request_id.isascii() or not request_id.isdigit():
        return None
    number = int(request_id)
    return number if str(number) == request_id and 0 < number <= _MAX_REJECTED_ID else None


def check_window(since: datetime | None, until: datetime | None) -> None:
    """``since`` and ``until`` must be aware datetimes (``since`` before ``until``)."""
    if since is not None:
        aware(since, name="since")
    if until is not None:
        aware(until, name="until")
    if since is not None and until is not None and since >= until:
        raise ConfigurationError("since must be before until")


def check_namespace(namespace: object) -> str:
    """Namespaces end up in SQL identifiers and Redis keys: keep them to a safe alphabet."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            "namespace must be 1-48 characters of a-z, 0-9 and _, not starting with a digit"
        )
    return namespace


def error_text(error: BaseException, *, max_chars: int = 2000) -> str:
    """How a handler error is kept: its type and message, bounded in size."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


_QUERY_PASSWORD: Final = re.compile(r"([?&;]password=)([^&#;]*)", re.IGNORECASE)


def _masked(url: str) -> tuple[str, set[str]]:
    """``url`` with its passwords masked, and the passwords (as written and percent-decoded)."""
    found = [match.group(2) for match in _QUERY_PASSWORD.finditer(url)]
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    head, sep, rest = url.partition("://")
    if sep:
        authority_end = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
        authority = rest[:authority_end]
        # The authority's last "@" ends the user info (as urllib, libpq and redis-py read it).
        # Without one, a password holding an unencoded "/", "?" or "#" puts its "@" further
        # on: then everything up to the URL's last "@" is taken for the user info. Masking too
        # much is the safe mistake.
        at = authority.rfind("@") if "@" in authority else rest.rfind("@")
        user, colon, password = rest[: max(at, 0)].partition(":")
        if at > 0 and colon and password and not any(c in user for c in "/?#[]"):
            found.append(password)
            url = f"{head}://{user}:***{rest[at:]}"
    return url, {secret for value in found for secret in (value, unquote(value)) if secret}


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: how to show a store URL.

    Masks the password of the user info (``scheme://user:password@host``) and of a
    ``password=`` query parameter (libpq and redis-py read both); everything else is left as
    it is. An unparsable URL is masked too: whatever stands between ``://user:`` and the
    ``@`` that ends the user info.

    >>> mask_url("postgresql://app:s3cret@db:5432/app")
    'postgresql://app:***@db:5432/app'
    >>> mask_url("redis://:s3cret@cache:notaport/0")
    'redis://:***@cache:notaport/0'
    >>> mask_url("sqlite:///./runflow-callbacks.db")
    'sqlite:///./runflow-callbacks.db'
    """
    return _masked(url)[0]


def scrub(text: str, url: str) -> str:
    """``text`` with every password of ``url`` masked: driver messages may echo the URL, or a
    part of it, as written or percent-decoded."""
    masked, secrets = _masked(url)
    text = text.replace(url, masked)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def open_store(
    url: str, *, namespace: str = DEFAULT_NAMESPACE, create: bool = True
) -> CallbackStore:
    """Open the store a URL names; no I/O happens until the first operation.

    ``memory://``, ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``redis://`` or ``rediss://`` (any redis-py URL), ``postgresql://`` or ``postgres://``
    (any libpq URL). Anything else, or a Redis or PostgreSQL URL its driver cannot parse,
    raises :class:`~runflow_callbacks.errors.ConfigurationError`; no message repeats the
    password of the URL (:func:`mask_url` shows one safely).

    ``create=False`` is for commands that only look at a store: a SQLite file that does not
    exist is then a :class:`~runflow_callbacks.errors.StoreError` at first use instead of a new
    empty database. (A SQLite file's directory is never created; Redis and PostgreSQL create
    only their keys and tables, so ``create`` changes nothing for them.)

    >>> store = open_store("memory://")
    >>> type(store).__name__
    'MemoryStore'
    """
    check_namespace(namespace)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from runflow_callbacks.stores.memory import MemoryStore  # noqa: PLC0415 - load only the backend asked for

        return MemoryStore()
    if scheme == "sqlite":
        from runflow_callbacks.stores.sqlite import SQLiteStore  # noqa: PLC0415 - load only the backend asked for

        path = unquote(urlsplit(url).path)
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        if not path:
            raise ConfigurationError(
                "a sqlite store URL needs a file: sqlite:///relative.db or sqlite:////abs.db"
            )
        return SQLiteStore(path, namespace=namespace, create=create)
    if scheme in {"redis", "rediss", "unix"}:
        from runflow_callbacks.stores.redis import RedisStore  # noqa: PLC0415 - load only the backend asked for

        return RedisStore(url, namespace=namespace)
    if scheme in {"postgresql", "postgres"}:
        from runflow_callbacks.stores.postgres import PostgresStore  # noqa: PLC0415 - load only the backend asked for

        return PostgresStore(url, namespace=namespace)
    shown = f"{scheme!r}" if scheme else "none"
    raise ConfigurationError(
        f"unknown store URL scheme ({shown}); use memory://, sqlite:///path.db, "
        "redis://host:port/db or postgresql://user@host/db"
    )
