"""``runflow-callbacks reconcile``: recover missed callbacks from Runflow's delivery history.

::

    runflow-callbacks reconcile --batch 0190f2a4-... --handler app:handle

Reads the history of each ``--batch`` and ``--run`` from the Runflow API (options as for
``history``) and processes, in the store of ``--store``, every delivered payload the store has
not processed yet; without ``--handler`` they are recorded for a ``serve --inbox`` worker.
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
            "Read the delivery history of each batch and run and process every delivered "
            "payload the store has not processed yet (marked as reconciled). Without "
            "--handler the payloads are recorded for a 'serve --inbox' worker."
        ),
    )
    parser.add_argument(
        "--batch", dest="batches", action="append", default=[], metavar="ID", help="a batch id"
    )
    parser.add_argument(
        "--run", dest="runs", action="append", default=[], metavar="ID", help="a run id"
    )
    add_store_options(parser)
    add_handler_option(parser, what="run it now for what was missed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_api_options(parser)
    parser.set_defaults(func=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    """Recover missed callbacks; exit 1 when any could not be processed."""
    if not args.batches and not args.runs:
        raise ConfigurationError("name at least one --batch or --run to reconcile")
    handler = handler_from_args(args)
    from runflow_callbacks.reconcile import reconcile  # noqa: PLC0415 - httpx and pydantic

    async def action(store: CallbackStore) -> ReconcileReport:
        async with async_client_from_args(args) as client:
            return await reconcile(
                client,
                processor_for(store, handler),
                store=store,
                batch_ids=args.batches,
                run_ids=args.runs,
            )

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
        detail = f" ({shown(item.detail)})" if item.detail else ""
        lines.append(f"{item.kind} {shown(item.subject_id)}: {item.status}{detail}")
    counts = report.to_json()["counts"]
    assert isinstance(counts, dict)  # to_json() is typed for JSON, not per key
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()) or "nothing")
    return "\n".join(lines)
