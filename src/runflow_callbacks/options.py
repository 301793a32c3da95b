"""Every option of the receiving pipeline, declared once: :class:`ReceiverOptions`.

Each front door takes them as keyword arguments (or a ready ``options=ReceiverOptions(...)``):
:class:`~runflow_callbacks.receiver.CallbackReceiver`, :func:`~runflow_callbacks.app.create_app`
and :class:`~runflow_callbacks.processing.CallbackProcessor` take all of them;
:class:`~runflow_callbacks.asgi.CallbackMiddleware` and
:class:`~runflow_callbacks.fastapi.CallbackDependency`, which run no handler, take the reader
options (:data:`READER_OPTIONS`). ``runflow-callbacks serve`` has a flag and an environment
variable for each option except ``clock`` (:mod:`runflow_callbacks.cli._options`; a test
checks that none is missing).

========================  ===================  ==============================================
option                    default              meaning
========================  ===================  ==============================================
``max_body_bytes``        16 MiB               largest body read; larger is 413, unread
``allow_unsigned``        False                accept requests *without* Runflow-Signature
``signature_header``      Runflow-Signature    the header carrying the signature (org-level
                                               webhooks' is undocumented: an assumption)
``body_timeout``          30 seconds           a body not complete by then is 408 (None: none)
``max_unverified_bytes``  64 MiB               bodies not yet verified held at once; beyond,
                                               503 (None: no budget)
``clock``                 ``utc_now``          ``received_at`` and every time the store keeps
``mode``                  ``"sync"``           ``"inbox"``: answer once recorded; a worker
                                               runs the handler
``lease``                 5 minutes            how long a run holds its callback unrenewed
``handler_timeout``       15 minutes           a longer run is cancelled and counted failed
                                               (None: no limit)
``max_tries``             8                    handler tries before the dead letter
                                               (None: never)
``backoff``               exponential, 2 s     tries -> delay before the next inbox retry
                          doubling to 10 min
``key``                   ``default_key``      the idempotency key function
                                               (:mod:`runflow_callbacks.keys`)
``poll_interval``         1 second             how often an idle inbox worker looks for work
``worker_batch_size``     16                   handlers an inbox worker runs at once
========================  ===================  ==============================================
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from runflow_callbacks._time import utc_now
from runflow_callbacks.defaults import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TRIES,
    DEFAULT_MAX_UNVERIFIED_BYTES,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SIGNATURE_HEADER,
)
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.keys import KeyFunction, default_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = [
    "READER_OPTIONS",
    "ExponentialBackoff",
    "Mode",
    "ReaderArgs",
    "ReaderView",
    "ReceiverArgs",
    "ReceiverOptions",
]

Mode = Literal["sync", "inbox"]
"""``sync``: the handler runs while Runflow waits; ``inbox``: answered once recorded."""


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Delay before retry number ``tries + 1``: ``base * factor ** (tries - 1)``, at most ``cap``.

    ``jitter`` (0 to 1) removes up to that fraction of each delay at random, so replicas that
    failed together do not retry together; ``random`` is injectable for tests.

    >>> backoff = ExponentialBackoff(base=timedelta(seconds=2), cap=timedelta(minutes=1))
    >>> [backoff(tries).total_seconds() for tries in (1, 2, 3, 10)]
    [2.0, 4.0, 8.0, 60.0]
    """

    base: timedelta = timedelta(seconds=2)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=10)
    jitter: float = 0.0
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base:
            raise ConfigurationError("backoff needs 0 < base <= cap")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("backoff needs factor >= 1 and 0 <= jitter <= 1")

    def __call__(self, tries: int) -> timedelta:
        exponent = min(max(tries - 1, 0), 64)
        seconds = min(self.base.total_seconds() * self.factor**exponent, self.cap.total_seconds())
        if self.jitter:
            seconds *= 1 - self.jitter * self.random()
        return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverOptions:
    """The options of the receiving pipeline, checked once here (see the module's table)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_unsigned: bool = False
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    body_timeout: timedelta | None = DEFAULT_BODY_TIMEOUT
    max_unverified_bytes: int | None = DEFAULT_MAX_UNVERIFIED_BYTES
    clock: Callable[[], datetime] = utc_now
    mode: Mode = "sync"
    lease: timedelta = DEFAULT_LEASE
    handler_timeout: timedelta | None = DEFAULT_HANDLER_TIMEOUT
    max_tries: int | None = DEFAULT_MAX_TRIES
    backoff: Callable[[int], timedelta] = field(default_factory=ExponentialBackoff)
    key: KeyFunction = default_key
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL
    worker_batch_size: int = 16

    def __post_init__(self) -> None:
        given: object = self.backoff
        if given is None:  # 0.1 documented backoff=None as "the default backoff"
            object.__setattr__(self, "backoff", ExponentialBackoff())
        _positive_int(self.max_body_bytes, "max_body_bytes", "bytes")
        if not isinstance(self.allow_unsigned, bool):
            raise ConfigurationError(f"allow_unsigned must be a bool, not {self.allow_unsigned!r}")
        header: object = self.signature_header
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise ConfigurationError(
                f"signature_header must be an HTTP header name, not {self.signature_header!r}"
            )
        if self.body_timeout is not None:
            _positive_duration(self.body_timeout, "body_timeout", or_none=True)
        if self.max_unverified_bytes is not None:
            _positive_int(self.max_unverified_bytes, "max_unverified_bytes", "bytes, or None")
        if self.mode not in {"sync", "inbox"}:
            raise ConfigurationError(f"mode must be 'sync' or 'inbox', not {self.mode!r}")
        _positive_duration(self.lease, "lease")
        if self.handler_timeout is not None:
            _positive_duration(self.handler_timeout, "handler_timeout", or_none=True)
        if self.max_tries is not None:
            _positive_int(self.max_tries, "max_tries", "tries, or None for never")
        _positive_duration(self.poll_interval, "poll_interval")
        _positive_int(self.worker_batch_size, "worker_batch_size", "handlers")
        for name in ("clock", "backoff", "key"):
            if not callable(getattr(self, name)):
                raise ConfigurationError(f"{name} must be callable, not {getattr(self, name)!r}")

    def replace(self, **changes: object) -> Self:
        """These options with ``changes`` (checked like a new instance)."""
        unknown = set(changes) - _FIELDS
        if unknown:
            raise ConfigurationError(f"unknown receiver option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type] # names checked above


#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _positive_int(value: object, name: str, unit: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int ({unit}), not {value!r}")


def _positive_duration(value: object, name: str, *, or_none: bool = False) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        extra = " or None" if or_none else ""
        raise ConfigurationError(f"{name} must be a positive timedelta{extra}, not {value!r}")


_FIELDS: Final = frozenset(item.name for item in dataclasses.fields(ReceiverOptions))
#: The options of a front door that only reads and verifies (middleware, FastAPI dependency).
READER_OPTIONS: Final = frozenset(
    {
        "max_body_bytes",
        "allow_unsigned",
        "signature_header",
        "body_timeout",
        "max_unverified_bytes",
        "clock",
    }
)


class ReaderView:
    """The reader options of a front door's ``options`` as attributes of their own
    (``middleware.max_body_bytes``...), as 0.1 had them."""

    __slots__ = ()
    options: ReceiverOptions

    @property
    def max_body_bytes(self) -> int:
        return self.options.max_body_bytes

    @property
    def allow_unsigned(self) -> bool:
        return self.options.allow_unsigned


class ReaderArgs(TypedDict, total=False):
    """The reader options as keyword arguments (the fields of :class:`ReceiverOptions`)."""

    max_body_bytes: int
    allow_unsigned: bool
    signature_header: str
    body_timeout: timedelta | None
    max_unverified_bytes: int | None
    clock: Callable[[], datetime]


class ReceiverArgs(ReaderArgs, total=False):
    """Every option as keyword arguments (the fields of :class:`ReceiverOptions`)."""

    mode: Mode
    lease: timedelta
    handler_timeout: timedelta | None
    max_tries: int | None
    backoff: Callable[[int], timedelta]
    key: KeyFunction
    poll_interval: timedelta
    worker_batch_size: int


def resolve(
    options: ReceiverOptions | None,
    changes: ReaderArgs | ReceiverArgs,
    *,
    allowed: frozenset[str] = _FIELDS,
    who: str = "this front door",
) -> ReceiverOptions:
    """``options`` (or the defaults) with the keyword ``changes`` a front door was given."""
    refused = set(changes) - allowed
    if refused:
        raise ConfigurationError(
            f"{who} takes no {', '.join(sorted(refused))} option: it runs no handler"
            if refused <= _FIELDS
            else f"unknown receiver option(s): {', '.join(sorted(refused - _FIELDS))}"
        )
    base = ReceiverOptions() if options is None else options
    if not isinstance(base, ReceiverOptions):
        raise ConfigurationError(f"options must be a ReceiverOptions, not {base!r}")
    return base.replace(**changes) if changes else base
