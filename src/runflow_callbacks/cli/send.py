"""``runflow-callbacks send``: post one signed callback to your receiver.

::

    runflow-callbacks send http://localhost:8000/callbacks/runflow --secret whsec_... \\
        --event batch.partial_succeeded --items 5 --set metadata='{"order": 42}'
    runflow-callbacks send http://localhost:8000/callbacks/runflow --secret whsec_... --again

The body is a realistic sample for ``--event`` (``runflow_callbacks.testing``), or ``--file``'s
exact bytes, signed as Runflow signs it: with the last of the secrets (the newest, during a
rotation) unless ``--sign-with`` names another; ``--unsigned`` leaves ``Runflow-Signature`` out.

The sample can be shaped: ``--status`` (the event follows it when ``--event`` is not given),
``--items N`` (a batch's items, its counts kept consistent) and ``--set PATH=VALUE``
(repeatable; a dotted path reaches nested fields, a number an item of a list; the value is
JSON when it parses as JSON, else a string). ``--set`` applies last, and nothing is
recomputed after it: it can make a payload inconsistent on purpose.

Every body sent is kept in :func:`last_send_path` (``$XDG_CACHE_HOME/runflow-callbacks/last-send``,
else ``~/.cache/runflow-callbacks/last-send``); ``--again`` sends those bytes once more, signed
the same way, to see the receiver answer a duplicate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from runflow_callbacks._events import EVENTS
from runflow_callbacks.cli._common import (
    add_signing_options,
    check_url,
    read_input,
    signing_secret,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_ITEMS",
    "FieldSetting",
    "apply_settings",
    "field_setting",
    "item_count",
    "last_send_path",
    "register",
    "run_send",
]

_MAX_SHOWN_BODY_CHARS: Final = 2000
#: The most items ``--items`` builds (about 1 MB of body; a receiver's default limit is 16 MiB).
MAX_ITEMS: Final = 10_000
_CACHE_HELP: Final = (
    "$XDG_CACHE_HOME/runflow-callbacks/last-send, else ~/.cache/runflow-callbacks/last-send"
)


class FieldSetting(NamedTuple):
    """One ``--set PATH=VALUE``: the path's parts, the parsed value, and the text given."""

    path: tuple[str, ...]
    value: Any
    text: str


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def field_setting(text: str) -> FieldSetting:
    """The type of ``--set``: ``output.total=3`` -> ``(("output", "total"), 3, ...)``.

    The value is JSON when it parses as JSON (``3``, ``true``, ``null``, ``{"a": 1}``,
    ``"3"`` for the string 3; not ``NaN``), else the text itself, as a string.
    """
    name, equals, raw = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PATH=VALUE (like batch_id=... or output.total=3)"
        )
    path = tuple(name.split("."))
    if not all(part.strip() for part in path):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a field path (names joined by dots, like output.total)"
        )
    try:
        value: Any = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        value = raw
    return FieldSetting(path, value, text)


def item_count(text: str) -> int:
    """The type of ``--items``: 0 to :data:`MAX_ITEMS`."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of items") from None
    if not 0 <= count <= MAX_ITEMS:
        raise argparse.ArgumentTypeError(f"{text!r} is not an item count from 0 to {MAX_ITEMS}")
    return count


def apply_settings(payload: dict[str, Any], settings: Sequence[FieldSetting]) -> dict[str, Any]:
    """``payload`` (JSON values) with each setting applied in turn, missing objects created.

    A path goes through objects by name (a missing or null one becomes an object) and through
    lists by position (``output.items.0``). A path through a string, a number or a boolean,
    or to a position a list does not have, raises
    :class:`~runflow_callbacks.errors.ConfigurationError`.
    """
    for setting in settings:
        where: Any = payload
        for depth, part in enumerate(setting.path):
            last = depth == len(setting.path) - 1
            if isinstance(where, dict):
                if last:
                    where[part] = setting.value
                elif where.get(part) is None:
                    where[part] = {}
                where = where[part]
            elif isinstance(where, list):
                if not (part.isascii() and part.isdigit() and int(part) < len(where)):
                    raise ConfigurationError(
                        f"--set {setting.text}: {'.'.join(setting.path[:depth])} is a list of "
                        f"{len(where)}, without a position {part}"
                    )
                if last:
                    where[int(part)] = setting.value
                where = where[int(part)]
            else:
                raise ConfigurationError(
                    f"--set {setting.text}: {'.'.join(setting.path[:depth])} is a "
                    f"{_json_kind(where)}, not an object or a list"
                )
    return payload


def _json_kind(value: object) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def last_send_path(environ: Mapping[str, str] | None = None) -> str:
    """Where ``send`` keeps the last body it sent, for ``--again``.

    ``$XDG_CACHE_HOME/runflow-callbacks/last-send``, or ``~/.cache/...`` when the variable is
    unset, empty or relative (the XDG base directory specification ignores relative paths).
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".cache")
    return os.path.join(base, "runflow-callbacks", "last-send")


def _keep(body: bytes, path: str) -> None:
    """Keep ``body`` at ``path`` for ``--again`` (replaced whole, readable by the user only).

    A cache that cannot be written costs ``--again``, not this send: one line on stderr.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(body)
        os.replace(temporary, path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(
            f"runflow-callbacks send: cannot keep the body for --again in {path}: {reason}",
            file=sys.stderr,
        )
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _last_sent(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise ConfigurationError(
            f"--again: nothing sent yet (send keeps the last body in {path})"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"--again: cannot read {path}: {reason}") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send`` to the command line."""
    send = subparsers.add_parser(
        "send",
        help="send one signed callback to an endpoint",
        description=(
            "POST one callback to URL, signed as Runflow signs it (with its current secret: "
            "the last one given, unless --sign-with names another): a realistic sample for "
            "--event, shaped by --status, --items and --set, or FILE's exact bytes, or with "
            "--again the last body sent, byte for byte. Prints the answer; exits 0 on 2xx, "
            f"1 otherwise. Every body sent is kept in {_CACHE_HELP}."
        ),
    )
    send.add_argument("url", metavar="URL", help="the callback endpoint")
    add_signing_options(send)
    send.add_argument(
        "--unsigned",
        action="store_true",
        help="send without Runflow-Signature (as for an organization without a secret)",
    )
    send.add_argument(
        "--event",
        choices=EVENTS,
        help="the sample to send (default: the batch event of --status, else batch.succeeded)",
    )
    send.add_argument(
        "--status",
        metavar="STATUS",
        help=(
            "the sample's status: succeeded, failed, cancelled or partial_succeeded (default: "
            "the event's). Without --event, the batch event of that status is sent; with "
            "--event, the status is sent as given, even when the two disagree"
        ),
    )
    send.add_argument(
        "--items",
        type=item_count,
        metavar="N",
        help=f"a batch sample's item count, 0 to {MAX_ITEMS}; its counts agree (default: 3)",
    )
    send.add_argument(
        "--set",
        action="append",
        dest="settings",
        type=field_setting,
        default=[],
        metavar="PATH=VALUE",
        help=(
            "set a field of the sample once it is built, counts not recomputed (repeatable): "
            "batch_id=..., output.total=3, output.items.0.status=failed. VALUE is JSON when "
            "it parses (3, true, null, {...}; '\"3\"' for the string 3), else a string"
        ),
    )
    send.add_argument("--file", metavar="BODY", help="send this file's bytes instead of a sample")
    send.add_argument(
        "--again",
        action="store_true",
        help=(
            "send the last body sent once more, byte for byte, to test deduplication "
            f"(kept in {_CACHE_HELP})"
        ),
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on the answer after this long (default: 10)",
    )
    send.set_defaults(func=run_send)


def _shaping(args: argparse.Namespace) -> list[str]:
    """The options given that build or shape the sample."""
    given = [
        ("--event", args.event is not None),
        ("--status", args.status is not None),
        ("--items", args.items is not None),
        ("--set", bool(args.settings)),
    ]
    return [name for name, present in given if present]


def _check_options(args: argparse.Namespace) -> None:
    check_url(args.url, what="URL")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise ConfigurationError("--timeout must be a positive number of seconds")
    if args.unsigned and args.secrets:
        raise ConfigurationError("--unsigned and --secret exclude each other")
    if args.unsigned and args.sign_with is not None:
        raise ConfigurationError("--unsigned and --sign-with exclude each other")
    if args.again and args.file is not None:
        raise ConfigurationError("--again and --file exclude each other")
    shaping = ", ".join(_shaping(args))
    if shaping and args.again:
        raise ConfigurationError(f"--again excludes {shaping}: it sends the last body as it was")
    if shaping and args.file is not None:
        raise ConfigurationError(f"--file excludes {shaping}: it sends the file's bytes as is")


def _sample(args: argparse.Namespace) -> bytes:
    """The body of the sample ``--event``, ``--status``, ``--items`` and ``--set`` describe."""
    from runflow_callbacks.testing.factories import (  # noqa: PLC0415 - pydantic
        BATCH_EVENT_STATUS,
        RUN_EVENT_STATUS,
        PayloadFactory,
    )
    from runflow_callbacks.wire import dumps_payload  # noqa: PLC0415 - pydantic

    event: str | None = args.event
    kind = "run" if event is not None and event.startswith("run.") else "batch"
    table = RUN_EVENT_STATUS if kind == "run" else BATCH_EVENT_STATUS
    overrides: dict[str, Any] = {}
    if args.status is not None:
        known = sorted(set(table.values()))
        if args.status not in known:
            raise ConfigurationError(
                f"--status {args.status!r} is not a status of {kind} callbacks "
                f"(known: {', '.join(known)})"
            )
        overrides["status"] = args.status
        if event is None:
            event = next(name for name, status in table.items() if status == args.status)
    if args.items is not None:
        if kind == "run":
            raise ConfigurationError(f"--items counts a batch's items; {event} is a run event")
        overrides["item_count"] = args.items
    factory = PayloadFactory()
    payload = factory.for_event(event or "batch.succeeded", **overrides)
    if not args.settings:
        return factory.body(payload)
    data: dict[str, Any] = json.loads(factory.body(payload))
    return dumps_payload(apply_settings(data, args.settings))


def run_send(args: argparse.Namespace) -> int:
    """Send one callback; print the status line and the answer's body."""
    _check_options(args)
    # httpx, and pydantic for the sample payloads: loaded for this command only.
    import httpx  # noqa: PLC0415

    from runflow_callbacks.testing.requests import signed_request  # noqa: PLC0415

    secret = None if args.unsigned else signing_secret(args)
    kept = last_send_path()
    if args.again:
        body = _last_sent(kept)
    elif args.file is not None:
        body = read_input(args.file)
    else:
        body = _sample(args)
    request = signed_request(body, secret)
    if not args.again:
        _keep(request.body, kept)
    try:
        response = httpx.post(
            args.url, content=request.body, headers=request.headers, timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        print(
            f"runflow-callbacks send: no answer from {args.url}: {type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    print(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
    text = response.text
    if text:
        shown = text[:_MAX_SHOWN_BODY_CHARS]
        print(shown + ("…" if len(text) > len(shown) else ""))
    return 0 if response.is_success else 1
