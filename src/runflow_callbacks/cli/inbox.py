"""``runflow-callbacks inbox``: look at and re-run what the receiver recorded.

::

    runflow-callbacks inbox list --json
    runflow-callbacks inbox show batch:0190f2a4-...:batch.succeeded
    runflow-callbacks inbox retry batch:0190f2a4-...:batch.succeeded --handler app:handle
    runflow-callbacks inbox stats

Every action reads the store of ``--store`` within ``--namespace`` (see
:mod:`runflow_callbacks.cli.serve`), and none creates it: a store that does not exist is an
error. ``retry`` with ``--handler`` runs the callbacks at once; without it, it resets them for
a running ``serve --inbox`` worker. It exits 0 only when every callback named was run
successfully (or reset). Values that came from a request (keys, events, headers) are shown
escaped (:func:`~runflow_callbacks.cli._common.shown`), so they cannot break or forge a line.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from runflow_callbacks.cli._common import (
    add_handler_option,
    add_store_options,
    handler_from_args,
    processor_for,
    run_with_store,
    shown,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

    from runflow_callbacks.stores import CallbackStore, StoredCallback

__all__ = [
    "register",
    "run_inbox_list",
    "run_inbox_retry",
    "run_inbox_show",
    "run_inbox_stats",
]


class _StoreStates:
    """The choices of ``inbox list --state``: the store's ``STATES``, imported on first use.

    Importing the stores package (and dataclasses with it) to build the parser would cost every
    command, ``sign`` and ``--version`` included, about a sixth of its start-up.
    """

    def __iter__(self) -> Iterator[str]:
        from runflow_callbacks.stores import STATES  # noqa: PLC0415 - the point of this class

        return iter(STATES)

    def __contains__(self, value: object) -> bool:
        return value in tuple(self)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inbox`` and its actions (``list``, ``show``, ``retry``, ``stats``)."""
    inbox = subparsers.add_parser(
        "inbox",
        help="look at and re-run what the receiver recorded",
        description="List, show, count and retry the callbacks recorded in a store.",
    )
    actions = inbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line (or JSON object) per callback")
    add_store_options(listing)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N callbacks")
    state = listing.add_argument("--state", help="only callbacks in this state")
    # Attached after add_argument, which would format them at once: argparse reads choices
    # again only to print help or an error and to check a given --state.
    state.choices = _StoreStates()
    listing.set_defaults(func=run_inbox_list)

    show = actions.add_parser("show", help="one callback, with its body")
    show.add_argument("key", metavar="KEY", help="the idempotency key (see 'inbox list')")
    add_store_options(show)
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=run_inbox_show)

    retry = actions.add_parser(
        "retry",
        help="run failed or dead callbacks again",
        description=(
            "Reset callbacks for another try. With --handler they run now; without it, a "
            "running 'serve --inbox' worker picks them up. Exits 0 when every one ran "
            "successfully (or was reset), 1 when any failed, was dead, unknown or not reset."
        ),
    )
    retry.add_argument("keys", nargs="*", metavar="KEY", help="idempotency keys")
    retry.add_argument(
        "--all", dest="all_state", choices=["failed", "dead"], help="every callback in this state"
    )
    add_store_options(retry)
    add_handler_option(retry, what="run it now")
    retry.set_defaults(func=run_inbox_retry)

    stats = actions.add_parser("stats", help="counts: received, duplicates, rejected, ...")
    add_store_options(stats)
    stats.add_argument("--json", action="store_true", help="print a JSON object")
    stats.set_defaults(func=run_inbox_stats)


def _when(record: StoredCallback) -> str:
    return record.received_at.strftime("%Y-%m-%d %H:%M:%S")


def run_inbox_list(args: argparse.Namespace) -> int:
    """Print the recorded callbacks, oldest first."""
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError("--limit must be a positive number")

    async def action(store: CallbackStore) -> list[StoredCallback]:
        return await store.list_callbacks(limit=args.limit, state=args.state)

    records = run_with_store(args, action, create=False)
    if args.json:
        print(json.dumps([record.to_json() for record in records], indent=2))
        return 0
    if not records:
        print("no callbacks recorded")
        return 0
    rows = [("RECEIVED (UTC)", "STATE", "TRIES", "DELIVERIES", "SOURCE", "KEY")]
    rows += [
        (
            _when(record),
            shown(record.state),
            str(record.attempts),
            str(record.deliveries),
            shown(record.source),
            shown(record.key),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def run_inbox_show(args: argparse.Namespace) -> int:
    """Print one callback with its headers and body."""

    async def action(store: CallbackStore) -> StoredCallback | None:
        return await store.get(args.key)

    record = run_with_store(args, action, create=False)
    if record is None:
        raise ConfigurationError(f"no callback is recorded under key {args.key!r}")
    body = record.body.decode("utf-8", errors="replace")
    if args.json:
        print(json.dumps({**record.to_json(), "headers": dict(record.headers), "body": body}))
        return 0
    for name, value in record.to_json().items():
        print(f"{name + ':':<18}{'' if value is None else shown(str(value))}")
    for name, value in record.headers.items():
        print(f"{'header:':<18}{shown(name)}: {shown(value)}")
    print()
    print(body)
    return 0


def run_inbox_retry(args: argparse.Namespace) -> int:
    """Reset callbacks for another try; run them now when a handler is given."""
    if not args.keys and args.all_state is None:
        raise ConfigurationError("name the callbacks to retry, or pass --all failed|dead")
    handler = handler_from_args(args)
    # The clock and the store's errors: loaded for this action only.
    from runflow_callbacks._time import utc_now  # noqa: PLC0415
    from runflow_callbacks.stores import UnknownCallbackError  # noqa: PLC0415

    async def action(store: CallbackStore) -> int:
        keys = list(args.keys)
        if args.all_state is not None:
            keys += [record.key for record in await store.list_callbacks(state=args.all_state)]
        processor = processor_for(store, handler)
        status = 0
        for key in keys:
            try:
                if processor is not None:
                    # Only a run that returned succeeded: failed, dead, duplicate (it was
                    # processed already, so nothing ran), in_progress or unhandled did not.
                    outcome = await processor.retry(key)
                    print(f"{shown(key)}: {outcome.status}")
                    succeeded = outcome.status == "processed"
                elif await store.reset_for_retry(key, now=utc_now()):
                    print(f"{shown(key)}: due again (a running 'serve --inbox' worker will run it)")
                    succeeded = True
                else:
                    print(f"{shown(key)}: not reset (already processed, or running right now)")
                    succeeded = False
            except UnknownCallbackError:
                print(f"{shown(key)}: no such callback", file=sys.stderr)
                succeeded = False
            status |= 0 if succeeded else 1
        return status

    return run_with_store(args, action, create=False)


def run_inbox_stats(args: argparse.Namespace) -> int:
    """Print the store's counts."""

    async def action(store: CallbackStore) -> dict[str, int]:
        return (await store.stats()).to_json()

    counts = run_with_store(args, action, create=False)
    if args.json:
        print(json.dumps(counts))
    else:
        for name, value in counts.items():
            print(f"{name + ':':<12}{value}")
    return 0
