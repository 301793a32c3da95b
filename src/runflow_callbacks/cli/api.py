"""``runflow-callbacks send``, ``history`` and ``redeliver``: a callback's story from the shell.

::

    runflow-callbacks send http://localhost:8000/callbacks/runflow --secret whsec_... \\
        --event batch.partial_succeeded
    runflow-callbacks history --batch 0190f2a4-0000-7000-8000-000000000002
    runflow-callbacks redeliver --batch 0190f2a4-0000-7000-8000-000000000002

``history`` and ``redeliver`` talk to the Runflow API at ``--api-url`` (or ``$RUNFLOW_API_URL``,
default ``https://api.runflow.io``) with ``--api-key`` (or ``$RUNFLOW_API_KEY``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Final

import httpx

from runflow_callbacks.cli._common import add_secret_options, read_input, secrets_from_args
from runflow_callbacks.client import DEFAULT_BASE_URL, RunflowClient
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.models import parse_delivery_history
from runflow_callbacks.testing.factories import EVENTS, PayloadFactory
from runflow_callbacks.testing.requests import signed_request

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from datetime import datetime

    from runflow_callbacks.models import CallbackDelivery

__all__ = ["format_history", "register", "run_history", "run_redeliver", "run_send"]

API_URL_ENV: Final = "RUNFLOW_API_URL"
API_KEY_ENV: Final = "RUNFLOW_API_KEY"
_MAX_SHOWN_BODY_CHARS: Final = 2000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send``, ``history`` and ``redeliver`` to the command line."""
    send = subparsers.add_parser(
        "send",
        help="send one signed callback to an endpoint",
        description=(
            "POST one callback to URL, signed as Runflow signs it: a realistic sample for "
            "--event, or FILE's exact bytes. Prints the answer; exits 0 on 2xx, 1 otherwise."
        ),
    )
    send.add_argument("url", metavar="URL", help="the callback endpoint")
    add_secret_options(send)
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

    history = subparsers.add_parser(
        "history",
        help="show the callback deliveries of a batch or run",
        description=(
            "Show each delivery of a batch's or run's callback: its state, whether it was "
            "automatic or a manual redelivery, and every attempt's HTTP status, response time "
            "and error. --json prints the records exactly as the API answered them."
        ),
    )
    _add_subject_options(history)
    history.add_argument("--json", action="store_true", help="print the raw records as JSON")
    _add_api_options(history)
    history.set_defaults(func=run_history)

    redeliver = subparsers.add_parser(
        "redeliver",
        help="ask Runflow to deliver a callback again",
        description="Start a manual redelivery of a batch's or run's callback.",
    )
    _add_subject_options(redeliver)
    _add_api_options(redeliver)
    redeliver.set_defaults(func=run_redeliver)


def _add_subject_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--batch", metavar="ID", help="a batch id")
    group.add_argument("--run", metavar="ID", help="a run id")


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help=f"the Runflow API (default: ${API_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the API key (default: ${API_KEY_ENV}; prefer the variable, flags are visible)",
    )
    parser.add_argument(
        "--organization-id", metavar="ID", help="sent as X-Organization-Id when given"
    )


def _client(args: argparse.Namespace) -> RunflowClient:
    return RunflowClient(
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        base_url=args.api_url or os.environ.get(API_URL_ENV) or DEFAULT_BASE_URL,
        organization_id=args.organization_id,
    )


# --- send ----------------------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    """Send one callback; print the status line and the answer's body."""
    if not args.url.startswith(("http://", "https://")):
        raise ConfigurationError("URL must start with http:// or https://")
    if args.timeout <= 0:
        raise ConfigurationError("--timeout must be positive")
    if args.unsigned and args.secrets:
        raise ConfigurationError("--unsigned and --secret exclude each other")
    secret = None
    if not args.unsigned:
        secrets = secrets_from_args(args)
        if len(secrets) != 1:
            raise ConfigurationError(f"send signs with exactly one secret, got {len(secrets)}")
        secret = secrets[0]
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


# --- history and redeliver -----------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def format_history(deliveries: Sequence[CallbackDelivery]) -> str:
    """A readable table of deliveries and their attempts (what ``history`` prints)."""
    if not deliveries:
        return "no callback deliveries"
    lines: list[str] = []
    for number, delivery in enumerate(deliveries, start=1):
        kind = {None: "?", True: "automatic", False: "manual"}[delivery.is_automatic]
        state = (delivery.status_code or "?").upper()
        attempts = delivery.attempts or []
        count = delivery.attempt_count if delivery.attempt_count is not None else len(attempts)
        header = (
            f"delivery {number}/{len(deliveries)}  {state}  {kind}  "
            f"{count}/{delivery.max_attempts or '?'} attempts  created {_when(delivery.created_at)}"
        )
        if delivery.failure_reason_code and delivery.status_code != "succeeded":
            header += f"  ({delivery.failure_reason_code}: {delivery.failure_detail or '-'})"
        if delivery.next_attempt_at is not None:
            header += f"  next attempt {_when(delivery.next_attempt_at)}"
        lines.append(header)
        lines.append(f"  id {delivery.id}  signed with {delivery.signing_secret_id or 'no secret'}")
        rows = [("#", "at", "HTTP", "time", "error")]
        rows += [
            (
                str(attempt.attempt_number or "?"),
                _when(attempt.created_at),
                "-" if attempt.status_code is None else str(attempt.status_code),
                "-" if attempt.response_time_ms is None else f"{attempt.response_time_ms} ms",
                attempt.error_message or "-",
            )
            for attempt in attempts
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines += [
            "  "
            + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4]))
            + "  "
            + row[4]
            for row in rows
        ]
    return "\n".join(lines)


def run_history(args: argparse.Namespace) -> int:
    """Print the deliveries of ``--batch`` or ``--run``."""
    with _client(args) as client:
        records: list[dict[str, Any]] = client.delivery_history_json(
            batch_id=args.batch, run_id=args.run
        )
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    deliveries = parse_delivery_history(
        json.dumps(records), kind="batch" if args.batch is not None else "run"
    )
    print(format_history(deliveries))
    return 0


def run_redeliver(args: argparse.Namespace) -> int:
    """Start a redelivery and say how to follow it."""
    with _client(args) as client:
        if args.batch is not None:
            delivery: CallbackDelivery = client.redeliver_batch(args.batch)
            option = f"--batch {args.batch}"
        else:
            delivery = client.redeliver_run(args.run)
            option = f"--run {args.run}"
    print(f"redelivery {delivery.id} created ({delivery.status_code or 'pending'})")
    print(f"follow it with: runflow-callbacks history {option}")
    return 0
