"""``runflow-callbacks reconcile``: recover missed callbacks from Runflow's delivery history.

::

    runflow-callbacks reconcile --batch 0190f2a4-... --handler app:handle
    runflow-callbacks reconcile --webhook any --since 2h --handler app:handle

Reads the history of each ``--batch`` and ``--run`` from the Runflow API (options as for
``history``), and the deliveries of each ``--webhook`` (an id, or ``any`` for all of them)
created since ``--since``, and processes, in the store of ``--store``, every delivered payload
the store has not processed yet; without ``--handler`` they are recorded for a
``serve --inbox`` worker. A webhook delivery keeps no bytes, so its body is rebuilt from the
parsed payload, and the report says so (``rebuilt``).
Unlike ``inbox``, it creates a store that does not exist yet: recovering into a new store is
what it is for. :func:`format_report` is what it prints (ids and details escaped).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from runflow_callbacks.cli._common import (
    add_api_options,
    add_handler_option,
    add_store_options,
    async_client_from_args,
    handler_from_args,
    processor_for,
    run_with_store,
    shown,
)
from runflow_callbacks.cli._options import moment
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from runflow_callbacks.reconcile import ReconcileReport
    from runflow_callbacks.stores import CallbackStore

__all__ = ["format_report", "register", "run_reconcile"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reconcile`` to the command line."""
    parser = subparsers.add_parser(
        "reconcile",
        help="recover missed callbacks from Runflow's delivery history",
        description=(
            "Read the delivery history of each batch and run, and the deliveries of each "
            "org-level webhook since a time, and process every delivered payload the store "
            "has not processed yet (marked as reconciled). Without --handler the payloads are "
            "recorded for a 'serve --inbox' worker. Webhook deliveries keep no bytes: their "
            "bodies are rebuilt from the parsed payload (the report says 'rebuilt')."
        ),
    )
    parser.add_argument(
        "--batch", dest="batches", action="append", default=[], metavar="ID", help="a batch id"
    )
    parser.add_argument(
        "--run", dest="runs", action="append", default=[], metavar="ID", help="a run id"
    )
    parser.add_argument(
        "--webhook",
        dest="webhooks",
        action="append",
        default=[],
        metavar="ID|any",
        help="recover from the deliveries of this webhook ('any': of every webhook); needs --since",
    )
    parser.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="with --webhook: the deliveries created since then, ISO 8601 "
        "(2026-12-01T10:00:00Z; UTC without a zone) or a duration ago (2h, 7d)",
    )
    add_store_options(parser)
    add_handler_option(parser, what="run it now for what was missed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_api_options(parser)
    parser.set_defaults(func=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    """Recover missed callbacks; exit 1 when any could not be processed."""
    if not args.batches and not args.runs and not args.webhooks:
        raise ConfigurationError(
            "name at least one --batch or --run (or --webhook with --since) to reconcile"
        )
    if args.webhooks and args.since is None:
        raise ConfigurationError("--webhook needs --since (2h, 7d, or an ISO 8601 time)")
    if args.since is not None and not args.webhooks:
        raise ConfigurationError("--since applies to --webhook only")
    handler = handler_from_args(args)
    from runflow_callbacks.reconcile import (  # noqa: PLC0415 - httpx and pydantic
        reconcile,
        reconcile_webhooks,
    )

    async def action(store: CallbackStore) -> ReconcileReport:
        processor = processor_for(store, handler)
        async with async_client_from_args(args) as client:
            report = await reconcile(
                client, processor, store=store, batch_ids=args.batches, run_ids=args.runs
            )
            if args.webhooks:
                webhooks = await reconcile_webhooks(
                    client, processor, store=store, since=args.since, webhook_ids=args.webhooks
                )
                report.items.extend(webhooks.items)
            return report

    report = run_with_store(args, action)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(report: ReconcileReport) -> str:
    """One line per batch or run, then the counts: what ``reconcile`` prints without --json.

    Ids and details (an API error's message, a handler's error) are shown escaped, so that
    none can break a line or forge one.
    """
    lines = []
    for item in report.items:
        notes = [shown(item.detail)] if item.detail else []
        if item.delivery_id is not None:
            origin = "body rebuilt from" if item.rebuilt else "from"
            notes.append(
                f"{origin} webhook {shown(item.webhook_id)} delivery {shown(item.delivery_id)}"
            )
        kind = item.kind.replace("_", " ")
        detail = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"{kind} {shown(item.subject_id)}: {item.status}{detail}")
    counts = report.to_json()["counts"]
    assert isinstance(counts, dict)  # to_json() is typed for JSON, not per key
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()) or "nothing")
    return "\n".join(lines)
