"""``runflow-callbacks serve``, ``inbox`` and ``reconcile``: the receiver as a program.

::

    runflow-callbacks serve --store sqlite:///./runflow-callbacks.db --handler app:handle
    runflow-callbacks inbox list --json
    runflow-callbacks inbox retry batch:0190f2a4-...:batch.succeeded --handler app:handle
    runflow-callbacks reconcile --batch 0190f2a4-... --handler app:handle

Secrets come from ``--secret`` (repeatable) or ``RUNFLOW_CALLBACK_SECRETS``; the store from
``--store`` (default ``sqlite:///./runflow-callbacks.db``), within ``--namespace`` (or
``RUNFLOW_CALLBACK_NAMESPACE``: the table or key prefix, so that several receivers can share
one server). A handler is ``module:function`` taking the
:class:`~runflow_callbacks.asgi.CallbackContext`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from runflow_callbacks.app import DEFAULT_STORE_URL, create_app, load_handler
from runflow_callbacks.asgi import DEFAULT_CALLBACK_PATH, DEFAULT_MAX_BODY_BYTES
from runflow_callbacks.cli._common import add_secret_options, secrets_from_args
from runflow_callbacks.cli.api import API_KEY_ENV, API_URL_ENV, _add_api_options
from runflow_callbacks.client import DEFAULT_BASE_URL, AsyncRunflowClient
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.processing import DEFAULT_MAX_TRIES, CallbackProcessor
from runflow_callbacks.receiver import Handler, as_processing_handler
from runflow_callbacks.reconcile import reconcile
from runflow_callbacks.stores import (
    DEFAULT_NAMESPACE,
    STATES,
    UnknownCallbackError,
    open_store,
)

if TYPE_CHECKING:
    import argparse

    from runflow_callbacks.stores import CallbackStore, StoredCallback

__all__ = ["register"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("RUNFLOW_CALLBACK_STORE", DEFAULT_STORE_URL),
        metavar="URL",
        help=(
            "where callbacks are recorded: sqlite:///path.db, redis://..., postgresql://... "
            f"(default: $RUNFLOW_CALLBACK_STORE, else {DEFAULT_STORE_URL})"
        ),
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("RUNFLOW_CALLBACK_NAMESPACE", DEFAULT_NAMESPACE),
        metavar="NAME",
        help=(
            "table name (SQL) or key prefix (Redis), so several receivers can share one server "
            f"(default: $RUNFLOW_CALLBACK_NAMESPACE, else {DEFAULT_NAMESPACE})"
        ),
    )


def _add_handler_option(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help=f"the function that processes each callback ({what})",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``inbox`` and ``reconcile`` to the command line."""
    serve = subparsers.add_parser(
        "serve",
        help="receive callbacks over HTTP and record each exactly once",
        description=(
            "Serve the receiver with uvicorn. Every verified callback is recorded in --store "
            "before it is answered. Without --handler callbacks are only recorded (see "
            "'inbox list'); with --handler it runs while Runflow waits, or in a background "
            "worker with --inbox."
        ),
    )
    add_secret_options(serve)
    _add_store_option(serve)
    _add_handler_option(serve, what="without it, callbacks are recorded in the inbox")
    serve.add_argument(
        "--inbox",
        action="store_true",
        help="answer 200 once recorded and run the handler in a background worker",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--path",
        default=DEFAULT_CALLBACK_PATH,
        help=f"the callback path (default: {DEFAULT_CALLBACK_PATH})",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"largest accepted body (default: {DEFAULT_MAX_BODY_BYTES})",
    )
    serve.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept callbacks without Runflow-Signature (an org without a callback secret)",
    )
    serve.add_argument(
        "--max-tries",
        type=int,
        default=DEFAULT_MAX_TRIES,
        metavar="N",
        help=f"handler tries before the dead letter (default: {DEFAULT_MAX_TRIES})",
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long one handler run holds its callback (default: 300)",
    )
    serve.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="inbox worker poll interval (default: 1)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    serve.set_defaults(func=run_serve)

    inbox = subparsers.add_parser(
        "inbox",
        help="look at and re-run what the receiver recorded",
        description="List, show, count and retry the callbacks recorded in a store.",
    )
    actions = inbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line (or JSON object) per callback")
    _add_store_option(listing)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N callbacks")
    listing.add_argument("--state", choices=STATES, help="only callbacks in this state")
    listing.set_defaults(func=run_inbox_list)

    show = actions.add_parser("show", help="one callback, with its body")
    show.add_argument("key", metavar="KEY", help="the idempotency key (see 'inbox list')")
    _add_store_option(show)
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=run_inbox_show)

    retry = actions.add_parser(
        "retry",
        help="run failed or dead callbacks again",
        description=(
            "Reset callbacks for another try. With --handler they run now; without it, a "
            "running 'serve --inbox' worker picks them up."
        ),
    )
    retry.add_argument("keys", nargs="*", metavar="KEY", help="idempotency keys")
    retry.add_argument(
        "--all", dest="all_state", choices=["failed", "dead"], help="every callback in this state"
    )
    _add_store_option(retry)
    _add_handler_option(retry, what="run it now")
    retry.set_defaults(func=run_inbox_retry)

    stats = actions.add_parser("stats", help="counts: received, duplicates, rejected, ...")
    _add_store_option(stats)
    stats.add_argument("--json", action="store_true", help="print a JSON object")
    stats.set_defaults(func=run_inbox_stats)

    reconcile_parser = subparsers.add_parser(
        "reconcile",
        help="recover missed callbacks from Runflow's delivery history",
        description=(
            "Read the delivery history of each batch and run and process every delivered "
            "payload the store has not processed yet (marked as reconciled). Without "
            "--handler the payloads are recorded for a 'serve --inbox' worker."
        ),
    )
    reconcile_parser.add_argument(
        "--batch", dest="batches", action="append", default=[], metavar="ID", help="a batch id"
    )
    reconcile_parser.add_argument(
        "--run", dest="runs", action="append", default=[], metavar="ID", help="a run id"
    )
    _add_store_option(reconcile_parser)
    _add_handler_option(reconcile_parser, what="run it now for what was missed")
    reconcile_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_api_options(reconcile_parser)
    reconcile_parser.set_defaults(func=run_reconcile)


# --- serve ---------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    """Serve the receiver until interrupted."""
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ConfigurationError(
            "serve needs uvicorn: pip install 'runflow-callbacks[serve]'"
        ) from None
    secrets = secrets_from_args(args)
    if args.lease_seconds <= 0 or args.poll_seconds <= 0:
        raise ConfigurationError("--lease-seconds and --poll-seconds must be positive")
    app = create_app(
        secrets=secrets,
        store=args.store,
        handler=args.handler,
        inbox=args.inbox,
        path=args.path,
        max_body_bytes=args.max_body_bytes,
        allow_unsigned=args.allow_unsigned,
        lease=timedelta(seconds=args.lease_seconds),
        max_tries=args.max_tries,
        poll_interval=timedelta(seconds=args.poll_seconds),
        namespace=args.namespace,
    )
    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    mode = "record only" if args.handler is None else ("inbox" if args.inbox else "sync")
    print(
        f"runflow-callbacks serve: http://{args.host}:{args.port}{args.path} "
        f"({mode}; {len(secrets)} secret(s); store {_scheme(args.store)})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


def _scheme(url: str) -> str:
    # Never print the whole URL: it may hold a password.
    return url.split("://", 1)[0] + "://…" if "://" in url else "?"


# --- inbox ---------------------------------------------------------------------------------


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _with_store(args: argparse.Namespace, action: Any) -> Any:
    async with open_store(args.store, namespace=args.namespace) as store:
        return await action(store)


def _when(record: StoredCallback) -> str:
    return record.received_at.strftime("%Y-%m-%d %H:%M:%S")


def run_inbox_list(args: argparse.Namespace) -> int:
    """Print the recorded callbacks, oldest first."""
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError("--limit must be a positive number")

    async def action(store: CallbackStore) -> list[StoredCallback]:
        return await store.list_callbacks(limit=args.limit, state=args.state)

    records: list[StoredCallback] = _run(_with_store(args, action))
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
            record.state,
            str(record.attempts),
            str(record.deliveries),
            record.source,
            record.key,
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

    record: StoredCallback | None = _run(_with_store(args, action))
    if record is None:
        raise ConfigurationError(f"no callback is recorded under key {args.key!r}")
    body = record.body.decode("utf-8", errors="replace")
    if args.json:
        print(json.dumps({**record.to_json(), "headers": dict(record.headers), "body": body}))
        return 0
    for name, value in record.to_json().items():
        print(f"{name + ':':<18}{'' if value is None else value}")
    for name, value in record.headers.items():
        print(f"{'header:':<18}{name}: {value}")
    print()
    print(body)
    return 0


def run_inbox_retry(args: argparse.Namespace) -> int:
    """Reset callbacks for another try; run them now when a handler is given."""
    if not args.keys and args.all_state is None:
        raise ConfigurationError("name the callbacks to retry, or pass --all failed|dead")
    handler = None if args.handler is None else load_handler(args.handler)

    async def action(store: CallbackStore) -> int:
        keys = list(args.keys)
        if args.all_state is not None:
            keys += [record.key for record in await store.list_callbacks(state=args.all_state)]
        processor = _processor(store, handler)
        status = 0
        for key in keys:
            try:
                if processor is not None:
                    outcome = await processor.retry(key)
                    print(f"{key}: {outcome.status}")
                    status |= 0 if outcome.ok and outcome.status != "dead" else 1
                elif await store.reset_for_retry(key, now=_now()):
                    print(f"{key}: due again (a running 'serve --inbox' worker will run it)")
                else:
                    print(f"{key}: not reset (already processed, or running right now)")
            except UnknownCallbackError:
                print(f"{key}: no such callback", file=sys.stderr)
                status = 1
        return status

    result: int = _run(_with_store(args, action))
    return result


def _processor(store: CallbackStore, handler: Handler | None) -> CallbackProcessor | None:
    return None if handler is None else CallbackProcessor(store, as_processing_handler(handler))


def _now() -> Any:
    from runflow_callbacks.asgi import utc_now  # noqa: PLC0415 - keep the import local to retry

    return utc_now()


def run_inbox_stats(args: argparse.Namespace) -> int:
    """Print the store's counts."""

    async def action(store: CallbackStore) -> dict[str, int]:
        return (await store.stats()).to_json()

    counts: dict[str, int] = _run(_with_store(args, action))
    if args.json:
        print(json.dumps(counts))
    else:
        for name, value in counts.items():
            print(f"{name + ':':<12}{value}")
    return 0


# --- reconcile -----------------------------------------------------------------------------


def run_reconcile(args: argparse.Namespace) -> int:
    """Recover missed callbacks; exit 1 when any could not be processed."""
    if not args.batches and not args.runs:
        raise ConfigurationError("name at least one --batch or --run to reconcile")
    handler = None if args.handler is None else load_handler(args.handler)

    async def action(store: CallbackStore) -> Any:
        async with AsyncRunflowClient(
            api_key=args.api_key or os.environ.get(API_KEY_ENV),
            base_url=args.api_url or os.environ.get(API_URL_ENV) or DEFAULT_BASE_URL,
            organization_id=args.organization_id,
        ) as client:
            return await reconcile(
                client,
                _processor(store, handler),
                store=store,
                batch_ids=args.batches,
                run_ids=args.runs,
            )

    report = _run(_with_store(args, action))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for item in report.items:
            detail = f" ({item.detail})" if item.detail else ""
            print(f"{item.kind} {item.subject_id}: {item.status}{detail}")
        counts = report.to_json()["counts"]
        print(", ".join(f"{count} {status}" for status, count in counts.items()) or "nothing")
    return 0 if report.ok else 1
