"""``runflow-callbacks history`` and ``redeliver``: a callback's story, from the Runflow API.

::

    runflow-callbacks history --batch 0190f2a4-0000-7000-8000-000000000002
    runflow-callbacks redeliver --batch 0190f2a4-0000-7000-8000-000000000002

Both talk to the Runflow API at ``--api-url`` (or ``$RUNFLOW_API_URL``, default
``https://api.runflow.io``) with ``--api-key`` (or ``$RUNFLOW_API_KEY``).
:func:`format_history` is the table ``history`` prints, times in UTC to the millisecond
(:func:`format_time`); the texts the API answered (states, failure details, error messages,
the receiver's answers) are shown escaped, so that none can break or forge a line, and each
answer is cut to :data:`MAX_SHOWN_ANSWER_CHARS`.
"""

from __future__ import annotations

import json
from datetime import timezone
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.cli._common import add_api_options, client_from_args, shown

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from datetime import datetime

    from runflow_callbacks.models import CallbackDelivery

__all__ = [
    "MAX_SHOWN_ANSWER_CHARS",
    "format_history",
    "format_time",
    "register",
    "run_history",
    "run_redeliver",
]

#: How much of a receiver's answer body one attempt's row shows (escaped, then cut).
MAX_SHOWN_ANSWER_CHARS: Final = 60


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``history`` and ``redeliver`` to the command line."""
    history = subparsers.add_parser(
        "history",
        help="show the callback deliveries of a batch or run",
        description=(
            "Show each delivery of a batch's or run's callback: its state, whether it was "
            "automatic or a manual redelivery, and every attempt's time (UTC), HTTP status, "
            f"response time, answer body (its first {MAX_SHOWN_ANSWER_CHARS} characters, "
            "escaped) and error. --json prints the records exactly as the API answered them."
        ),
    )
    _add_subject_options(history)
    history.add_argument("--json", action="store_true", help="print the raw records as JSON")
    add_api_options(history)
    history.set_defaults(func=run_history)

    redeliver = subparsers.add_parser(
        "redeliver",
        help="ask Runflow to deliver a callback again",
        description="Start a manual redelivery of a batch's or run's callback.",
    )
    _add_subject_options(redeliver)
    add_api_options(redeliver)
    redeliver.set_defaults(func=run_redeliver)


def _add_subject_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--batch", metavar="ID", help="a batch id")
    group.add_argument("--run", metavar="ID", help="a run id")


def format_time(value: datetime) -> str:
    """``value`` in UTC to the millisecond, ``2026-12-01 21:04:05.123Z`` (a naive one is
    taken as UTC already)."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d}Z"


def _when(value: datetime | None) -> str:
    return "-" if value is None else format_time(value)


def _answer(body: str | None) -> str:
    """A receiver's answer in one cell: surrounding blanks dropped, escaped, then cut."""
    text = shown((body or "").strip() or None)
    if len(text) > MAX_SHOWN_ANSWER_CHARS:
        text = text[: MAX_SHOWN_ANSWER_CHARS - 1] + "…"
    return text


def format_history(deliveries: Sequence[CallbackDelivery]) -> str:
    """A readable table of deliveries and their attempts (what ``history`` prints).

    Times are UTC with milliseconds; each attempt shows the start of the receiver's answer
    body (:data:`MAX_SHOWN_ANSWER_CHARS`) and its error, both escaped by :func:`shown`.
    """
    if not deliveries:
        return "no callback deliveries"
    lines: list[str] = []
    for number, delivery in enumerate(deliveries, start=1):
        kind = {None: "?", True: "automatic", False: "manual"}[delivery.is_automatic]
        state = shown((delivery.status_code or "?").upper())
        attempts = delivery.attempts or []
        count = delivery.attempt_count if delivery.attempt_count is not None else len(attempts)
        header = (
            f"delivery {number}/{len(deliveries)}  {state}  {kind}  "
            f"{count}/{delivery.max_attempts or '?'} attempts  created {_when(delivery.created_at)}"
        )
        if delivery.failure_reason_code and delivery.status_code != "succeeded":
            reason = shown(delivery.failure_reason_code)
            header += f"  ({reason}: {shown(delivery.failure_detail or None)})"
        if delivery.next_attempt_at is not None:
            header += f"  next attempt {_when(delivery.next_attempt_at)}"
        lines.append(header)
        lines.append(f"  id {delivery.id}  signed with {delivery.signing_secret_id or 'no secret'}")
        rows = [("#", "at (UTC)", "HTTP", "time", "answer", "error")]
        rows += [
            (
                str(attempt.attempt_number or "?"),
                _when(attempt.created_at),
                "-" if attempt.status_code is None else str(attempt.status_code),
                "-" if attempt.response_time_ms is None else f"{attempt.response_time_ms} ms",
                _answer(attempt.response_body),
                shown(attempt.error_message or None),
            )
            for attempt in attempts
        ]
        padded = len(rows[0]) - 1  # every column but the last, the error, is padded
        widths = [max(len(row[i]) for row in rows) for i in range(padded)]
        lines += [
            "  "
            + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:padded]))
            + "  "
            + row[padded]
            for row in rows
        ]
    return "\n".join(lines)


def run_history(args: argparse.Namespace) -> int:
    """Print the deliveries of ``--batch`` or ``--run``."""
    from runflow_callbacks.models import parse_delivery_history  # noqa: PLC0415 - pydantic

    with client_from_args(args) as client:
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
    with client_from_args(args) as client:
        if args.batch is not None:
            delivery: CallbackDelivery = client.redeliver_batch(args.batch)
            option = f"--batch {args.batch}"
        else:
            delivery = client.redeliver_run(args.run)
            option = f"--run {args.run}"
    print(f"redelivery {delivery.id} created ({delivery.status_code or 'pending'})")
    print(f"follow it with: runflow-callbacks history {option}")
    return 0
