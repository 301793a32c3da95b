"""``runflow-callbacks send``: post one signed callback to your receiver.

::

    runflow-callbacks send http://localhost:8000/callbacks/runflow --secret whsec_... \\
        --event batch.partial_succeeded

The body is a realistic sample for ``--event`` (``runflow_callbacks.testing``), or ``--file``'s
exact bytes, signed as Runflow signs it: with the last of the secrets (the newest, during a
rotation) unless ``--sign-with`` names another; ``--unsigned`` leaves ``Runflow-Signature`` out.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Final

from runflow_callbacks._events import EVENTS
from runflow_callbacks.cli._common import (
    add_signing_options,
    check_url,
    read_input,
    signing_secret,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

__all__ = ["register", "run_send"]

_MAX_SHOWN_BODY_CHARS: Final = 2000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send`` to the command line."""
    send = subparsers.add_parser(
        "send",
        help="send one signed callback to an endpoint",
        description=(
            "POST one callback to URL, signed as Runflow signs it (with its current secret: "
            "the last one given, unless --sign-with names another): a realistic sample for "
            "--event, or FILE's exact bytes. Prints the answer; exits 0 on 2xx, 1 otherwise."
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
        default="batch.succeeded",
        choices=EVENTS,
        help="the sample to send (default: batch.succeeded)",
    )
    send.add_argument("--file", metavar="BODY", help="send this file's bytes instead of a sample")
    send.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on the answer after this long (default: 10)",
    )
    send.set_defaults(func=run_send)


def run_send(args: argparse.Namespace) -> int:
    """Send one callback; print the status line and the answer's body."""
    check_url(args.url, what="URL")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise ConfigurationError("--timeout must be a positive number of seconds")
    if args.unsigned and args.secrets:
        raise ConfigurationError("--unsigned and --secret exclude each other")
    if args.unsigned and args.sign_with is not None:
        raise ConfigurationError("--unsigned and --sign-with exclude each other")
    # httpx, and pydantic for the sample payloads: loaded for this command only.
    import httpx  # noqa: PLC0415

    from runflow_callbacks.testing.factories import PayloadFactory  # noqa: PLC0415
    from runflow_callbacks.testing.requests import signed_request  # noqa: PLC0415

    secret = None if args.unsigned else signing_secret(args)
    if args.file is not None:
        body = read_input(args.file)
    else:
        body = PayloadFactory.body(PayloadFactory().for_event(args.event))
    request = signed_request(body, secret)
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
