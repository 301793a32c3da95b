"""The receiver's options as ``serve`` flags and ``RUNFLOW_CALLBACK_*`` variables.

:class:`~runflow_callbacks.options.ReceiverOptions` declares the options; this table says how
the command line spells and reads each one (``tests/test_options.py`` checks that every option
but ``clock``, a test hook, is here). An option's environment variable is ``RUNFLOW_CALLBACK_``
plus its name in capitals (``RUNFLOW_CALLBACK_HANDLER_TIMEOUT``). A flag wins over its
variable; neither given, the option keeps the library's default. Building the parser imports
nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.defaults import ENV_PREFIX
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from runflow_callbacks.options import ExponentialBackoff

__all__ = [
    "add_receiver_options",
    "add_server_options",
    "env_name",
    "moment",
    "option_flags",
    "options_from_args",
    "read_option",
    "server_bounds",
    "span",
    "whole_number",
]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def env_name(option: str) -> str:
    """The environment variable of an option: ``RUNFLOW_CALLBACK_<NAME>``."""
    return ENV_PREFIX + option.upper()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _duration(text: str) -> timedelta:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return timedelta(seconds=value)


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def span(text: str) -> timedelta:
    """A duration for retention: ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (or seconds)."""
    stripped = text.strip().lower()
    unit = _UNITS.get(stripped[-1:], 0) if stripped else 0
    number = stripped[:-1] if unit else stripped
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (a number and s, m, h, d or w: 7d, 12h)"
        ) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0")
    return timedelta(seconds=value)


def moment(text: str) -> datetime:
    """A point in time: ISO 8601 (``2026-12-01T10:00:00Z``; without a zone, UTC), or a
    duration meaning that long ago (``2h``, ``7d``)."""
    stripped = text.strip()
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            ago = span(stripped)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a time: ISO 8601 (2026-12-01T10:00:00Z) or a duration "
                "ago (2h, 7d)"
            ) from None
        return datetime.now(timezone.utc) - ago
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _duration_or_zero(text: str) -> timedelta:
    return timedelta(seconds=_seconds(text))  # 0: no limit (None once read)


def _count(text: str, *, zero: bool) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0 or (value == 0 and not zero):
        wanted = "0 or more" if zero else "a positive number"
        raise argparse.ArgumentTypeError(f"{text!r} must be {wanted}")
    return value


def _positive(text: str) -> int:
    return _count(text, zero=False)


def _positive_or_zero(text: str) -> int:
    return _count(text, zero=True)  # 0: never (None once read)


def whole_number(text: str) -> int:
    """A count of 0 or more, as a flag reads it (``--keep-rejected``...)."""
    return _count(text, zero=True)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value (1/0, true/false)")


def _backoff(text: str) -> ExponentialBackoff:
    from runflow_callbacks.options import ExponentialBackoff  # noqa: PLC0415 - only when given

    base, _, cap = text.partition(":")
    first = _duration(base)
    last = _duration(cap) if cap else max(first, ExponentialBackoff().cap)
    if last < first:
        raise argparse.ArgumentTypeError("the cap must not be shorter than the base")
    return ExponentialBackoff(base=first, cap=last, jitter=0.1)


def _header_name(text: str) -> str:
    name = text.strip()
    if not name or any(not (c.isascii() and (c.isalnum() or c in "!#$%&'*+.^_`|~-")) for c in name):
        raise argparse.ArgumentTypeError(f"{text!r} is not an HTTP header name")
    return name


def _spec(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODULE:FUNCTION")
    return text


# option -> (flag, argparse type, metavar, default shown, help)
_FLAGS: Final[dict[str, tuple[str, Callable[[str], Any], str | None, str, str]]] = {
    "max_body_bytes": (
        "--max-body-bytes",
        _positive,
        "N",
        "16 MiB",
        "largest accepted body, in bytes",
    ),
    "allow_unsigned": (
        "--allow-unsigned",
        _boolean,
        None,
        "off",
        "accept callbacks without Runflow-Signature (an org without a callback secret)",
    ),
    "signature_header": (
        "--signature-header",
        _header_name,
        "NAME",
        "Runflow-Signature",
        "the header carrying the signature (org-level webhooks: undocumented; assumed "
        "Runflow-Signature)",
    ),
    "body_timeout": (
        "--body-timeout",
        _duration_or_zero,
        "SECONDS",
        "30",
        "how long a client may take to send a body once its headers arrived; later, 408 "
        "(0: no limit)",
    ),
    "max_unverified_bytes": (
        "--max-unverified-bytes",
        _positive_or_zero,
        "N",
        "64 MiB",
        "the most bytes of bodies not yet verified held at once; beyond, 503 (0: no budget)",
    ),
    "mode": (
        "--mode",
        str,
        None,
        "sync",
        "sync: the handler runs while Runflow waits; inbox: answer once recorded and run the "
        "handler in a background worker",
    ),
    "lease": (
        "--lease-seconds",
        _duration,
        "SECONDS",
        "300",
        "how long one handler run holds its callback",
    ),
    "handler_timeout": (
        "--handler-timeout",
        _duration_or_zero,
        "SECONDS",
        "900",
        "how long a handler may run before it is cancelled and counted failed (0: no limit)",
    ),
    "max_tries": (
        "--max-tries",
        _positive_or_zero,
        "N",
        "8",
        "handler tries before the dead letter (0: never)",
    ),
    "backoff": (
        "--backoff-seconds",
        _backoff,
        "BASE[:CAP]",
        "2:600",
        "the inbox retry delay: BASE seconds, doubling per try up to CAP",
    ),
    "key": (
        "--key",
        _spec,
        "MODULE:FUNCTION",
        "kind:id:event",
        "the function computing the idempotency key from (payload, body)",
    ),
    "poll_interval": (
        "--poll-seconds",
        _duration,
        "SECONDS",
        "1",
        "how often an idle inbox worker looks for work",
    ),
    "worker_batch_size": (
        "--worker-batch-size",
        _positive,
        "N",
        "16",
        "handlers an inbox worker runs at once",
    ),
}


class _BadVariable:
    """The default of a flag whose variable holds no usable value: :func:`options_from_args`
    reports it. Building the parser must not fail, for ``serve`` or any other command."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _flag_default(read: Callable[[str], Any], raw: str, env: str) -> Any:
    """``read(raw)``, the value of ``env``; a :class:`_BadVariable` when it cannot be read."""
    try:
        return read(raw)
    except argparse.ArgumentTypeError as exc:
        return _BadVariable(f"${env}: {exc}")


def option_flags() -> dict[str, str]:
    """Option name -> its ``serve`` flag, for every option that has one."""
    return {name: row[0] for name, row in _FLAGS.items()}


def add_receiver_options(parser: argparse.ArgumentParser) -> None:
    """A flag per receiver option, defaulting to its environment variable."""
    group = parser.add_argument_group(
        "receiver options", f"each also read from {ENV_PREFIX}<OPTION> (a flag wins)"
    )
    for name, (flag, read, metavar, shown, help_start) in _FLAGS.items():
        dest = f"option_{name}"
        env = env_name(name)
        raw = os.environ.get(env)
        help_text = f"{help_start} (default: ${env}, else {shown})"
        if name == "allow_unsigned":
            group.add_argument(
                flag,
                dest=dest,
                action="store_true",
                default=None if raw is None else _flag_default(read, raw, env),
                help=help_text,
            )
        elif name == "mode":
            group.add_argument(
                flag, dest=dest, choices=["sync", "inbox"], default=raw, help=help_text
            )
        else:
            group.add_argument(
                flag, dest=dest, type=read, metavar=metavar, default=raw, help=help_text
            )
    group.add_argument(
        "--inbox",
        dest="option_mode",
        action="store_const",
        const="inbox",
        help="short for --mode inbox: answer once recorded, run the handler in a worker",
    )


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given by flag or variable, ready for ``create_app(**options)``.

    A ``--key`` spec is imported here (it may name the application's own module).
    """
    given: dict[str, Any] = {}
    for name in _FLAGS:
        value = getattr(args, f"option_{name}", None)
        if value is None:
            continue  # neither flag nor variable: the library's default
        if isinstance(value, _BadVariable):
            raise ConfigurationError(value.message)
        if name == "key":
            from runflow_callbacks.app import load_handler  # noqa: PLC0415 - run time only

            value = load_handler(value, flag="--key")
        elif name in _ZERO_IS_NONE and not value:
            value = None
        given[name] = value
    return given


#: Options whose 0 on the command line means "no limit" (None in the library).
_ZERO_IS_NONE: Final = frozenset(
    {"handler_timeout", "max_tries", "body_timeout", "max_unverified_bytes"}
)


def read_option(name: str, text: str, *, where: str) -> Any:
    """The library value of option ``name`` written ``text`` as on its flag (``"30"`` seconds,
    ``"2:600"``, ``"module:function"``; 0 for no limit), for ``serve --config`` and
    ``--sender-option``. Raises :class:`~runflow_callbacks.errors.ConfigurationError` starting
    with ``where`` (the file and key, or the flag) for an unknown option or a bad value."""
    row = _FLAGS.get(name)
    if row is None:
        raise ConfigurationError(f"{where}: unknown receiver option {name!r}")
    if name == "mode":
        if text not in {"sync", "inbox"}:
            raise ConfigurationError(f"{where}: must be 'sync' or 'inbox', not {text!r}")
        return text
    try:
        value = row[1](text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if name == "key":
        from runflow_callbacks.app import load_handler  # noqa: PLC0415 - run time only

        return load_handler(value, flag=where)
    return None if name in _ZERO_IS_NONE and not value else value


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The bounds of the HTTP server itself (``serve``), each with its variable too."""
    group = parser.add_argument_group(
        "server bounds", "against slow or too many clients (see the README's 'Limits')"
    )
    head = os.environ.get(ENV_PREFIX + "HEAD_TIMEOUT", "10")
    group.add_argument(
        "--head-timeout",
        type=_duration_or_zero,
        default=head,
        metavar="SECONDS",
        help="how long a client may take to send a request's headers; later, 408 and the "
        f"connection closed (0: no limit; default: ${ENV_PREFIX}HEAD_TIMEOUT, else 10)",
    )
    connections = os.environ.get(ENV_PREFIX + "MAX_CONNECTIONS", "256")
    group.add_argument(
        "--max-connections",
        type=_positive_or_zero,
        default=connections,
        metavar="N",
        help="concurrent connections and requests before answering 503 (0: no limit; "
        f"default: ${ENV_PREFIX}MAX_CONNECTIONS, else 256)",
    )


def server_bounds(args: argparse.Namespace) -> tuple[timedelta | None, int | None]:
    """``(head_timeout, max_connections)`` from :func:`add_server_options`' flags."""
    head: timedelta = args.head_timeout
    connections: int = args.max_connections
    return (head or None), (connections or None)
