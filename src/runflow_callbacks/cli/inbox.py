"""``runflow-callbacks inbox``: look at and re-run what the receiver recorded.

::

    runflow-callbacks inbox list --json
    runflow-callbacks inbox show batch:0190f2a4-...:batch.succeeded
    runflow-callbacks inbox retry batch:0190f2a4-...:batch.succeeded --handler app:handle
    runflow-callbacks inbox retry --state processed --event batch.failed --since 2h --force
    runflow-callbacks inbox prune --older-than 7d
    runflow-callbacks inbox rejected
    runflow-callbacks inbox replay-rejected --all --handler app:handle
    runflow-callbacks inbox stats
    runflow-callbacks inbox web --allow-retry --handler app:handle

Every action reads the store of ``--store`` within ``--namespace`` (see
:mod:`runflow_callbacks.cli.serve`), and none creates it: a store that does not exist is an
error. ``retry`` with ``--handler`` runs the callbacks at once; without it, it resets them for
a running ``serve --inbox`` worker. It exits 0 only when every callback named was run
successfully (or reset). Values that came from a request (keys, events, headers) are shown
escaped (:func:`~runflow_callbacks.cli._common.shown`), so they cannot break or forge a line.
``web`` serves the same in a browser (:mod:`runflow_callbacks.web`): on 127.0.0.1 unless
given a ``--token``, read-only unless given ``--allow-retry``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Final

from runflow_callbacks.cli._common import (
    add_handler_option,
    add_secret_options,
    add_store_options,
    handler_from_args,
    open_store_from_args,
    port_number,
    processor_for,
    run_with_store,
    secrets_from_args,
    shown,
)
from runflow_callbacks.cli._options import moment, span
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from datetime import datetime

    from runflow_callbacks.stores import CallbackStore, RejectedRequest, State, StoredCallback

__all__ = [
    "register",
    "run_inbox_list",
    "run_inbox_prune",
    "run_inbox_rejected",
    "run_inbox_replay_rejected",
    "run_inbox_retry",
    "run_inbox_show",
    "run_inbox_stats",
    "run_inbox_web",
]

#: Where ``inbox web`` reads its token when no ``--token`` is given.
WEB_TOKEN_ENV: Final = "RUNFLOW_CALLBACK_WEB_TOKEN"  # noqa: S105 - a variable name
#: Callbacks on a page of ``inbox web`` (``runflow_callbacks.web.DEFAULT_PAGE_SIZE``, not
#: imported: building the parser must not load Starlette).
_WEB_PAGE_SIZE: Final = 50


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
    """Add ``inbox`` and its actions (``list``, ``show``, ``retry``, ``prune``, ``rejected``,
    ``replay-rejected``, ``stats``, ``web``)."""
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
        help="run failed or dead callbacks again (processed ones with --force)",
        description=(
            "Reset callbacks for another try: those named, or every one the filters select "
            "(--state, --event, --since, --until; without --state: failed and dead ones). With "
            "--handler they run now; without it, a running 'serve --inbox' worker picks them "
            "up. --force also re-runs processed callbacks, as one more attempt. --dry-run "
            "only prints what would be retried. Exits 0 when every one ran successfully (or "
            "was reset), 1 when any failed, was dead, unknown or not reset."
        ),
    )
    retry.add_argument("keys", nargs="*", metavar="KEY", help="idempotency keys")
    retry.add_argument(
        "--all", dest="all_state", choices=["failed", "dead"], help="every callback in this state"
    )
    retry_state = retry.add_argument(
        "--state",
        dest="states",
        action="append",
        help="select the callbacks in this state (repeatable)",
    )
    retry_state.choices = _StoreStates()
    retry.add_argument("--event", help="select the callbacks of this event (batch.failed, ...)")
    add_window_options(retry)
    retry.add_argument(
        "--force",
        action="store_true",
        help="also re-run processed callbacks (recorded as one more attempt)",
    )
    retry.add_argument(
        "--dry-run", action="store_true", help="print what would be retried; change nothing"
    )
    add_store_options(retry)
    add_handler_option(retry, what="run it now")
    retry.set_defaults(func=run_inbox_retry)

    prune = actions.add_parser(
        "prune",
        help="remove the bodies of old finished callbacks, keeping tombstones that deduplicate",
        description=(
            "Retention: remove the body and headers of processed and dead callbacks last "
            "updated more than --older-than ago. Each keeps a tombstone (key, state, counts, "
            "times), so a later delivery of it is still answered as a duplicate and its handler "
            "does not run again. Tombstones are removed --tombstones-older-than after their "
            "last update. Durations: 90s, 30m, 12h, 7d, 2w."
        ),
    )
    prune.add_argument(
        "--older-than",
        type=span,
        required=True,
        metavar="DURATION",
        help="prune callbacks finished longer ago than this (7d, 12h, ...)",
    )
    prune.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=["processed", "dead"],
        help="prune only callbacks in this state (repeatable; default: processed and dead)",
    )
    prune.add_argument(
        "--tombstones-older-than",
        type=span,
        metavar="DURATION",
        help="remove the tombstones not updated for this long (default: 90d; a delivery "
        "after that runs the handler again)",
    )
    prune.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_store_options(prune)
    prune.set_defaults(func=run_inbox_prune)

    rejected = actions.add_parser(
        "rejected",
        help="the requests the receiver refused, as kept by 'serve --keep-rejected N'",
        description=(
            "List the rejected requests kept in the store, newest first: id, time, reason, "
            "body size, request id, and whether it was replayed since."
        ),
    )
    add_store_options(rejected)
    rejected.add_argument("--json", action="store_true", help="print a JSON array")
    rejected.add_argument("--limit", type=_positive, metavar="N", help="at most N requests")
    rejected.add_argument(
        "--show", metavar="ID", help="print one request in full: headers and body"
    )
    rejected.set_defaults(func=run_inbox_rejected)

    replay = actions.add_parser(
        "replay-rejected",
        help="verify kept rejected requests again with today's secrets and process them",
        description=(
            "Verify each kept rejected request again with the secrets given now (--secret or "
            "$RUNFLOW_CALLBACK_SECRETS); those that verify are recorded exactly once, as "
            "deliveries, and with --handler run now (without, a 'serve --inbox' worker runs "
            "them). Exits 0 when every one named verified, 1 otherwise."
        ),
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="ids from 'inbox rejected'")
    replay.add_argument(
        "--all", action="store_true", help="every kept request not replayed yet, oldest first"
    )
    add_secret_options(replay)
    add_store_options(replay)
    add_handler_option(replay, what="run it now")
    replay.set_defaults(func=run_inbox_replay_rejected)

    stats = actions.add_parser("stats", help="counts: received, duplicates, rejected, ...")
    add_store_options(stats)
    stats.add_argument("--json", action="store_true", help="print a JSON object")
    stats.set_defaults(func=run_inbox_stats)

    web = actions.add_parser(
        "web",
        help="the inbox in a browser: counts, callbacks, details (and retry, if allowed)",
        description=(
            "Serve pages showing the store's counts, its callbacks (newest first, filtered by "
            "state, event and time received) and each callback's headers, body and last error. "
            "Read-only unless --allow-retry. Binds 127.0.0.1 unless --host says otherwise, "
            "which needs a --token."
        ),
    )
    add_store_options(web)
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface (default: 127.0.0.1); any other than a loopback one needs --token",
    )
    web.add_argument(
        "--port",
        type=port_number,
        default=8080,
        help="port (default: 8080; 0: any free port, named in uvicorn's log)",
    )
    web.add_argument(
        "--token",
        metavar="TOKEN",
        help=(
            "every request must carry it (Authorization: Bearer TOKEN, or ?token=TOKEN once, "
            f"kept as a cookie); 16 characters or more (default: ${WEB_TOKEN_ENV}; prefer the "
            "variable: command-line values are visible in the process list)"
        ),
    )
    web.add_argument(
        "--allow-retry",
        action="store_true",
        help="add a Retry button to the page of a failed, dead, unhandled or received callback",
    )
    add_handler_option(
        web,
        what="with --allow-retry: a retried callback runs now; without a handler it is made due "
        "again for a running 'serve --inbox' worker",
    )
    web.add_argument(
        "--page-size",
        type=_positive,
        default=_WEB_PAGE_SIZE,
        metavar="N",
        help=f"callbacks a page (default: {_WEB_PAGE_SIZE})",
    )
    web.set_defaults(func=run_inbox_web)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return number


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
    _print_table(rows)
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one (a key or an id) is never padded."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def _print_detail(
    fields: Mapping[str, object], headers: Mapping[str, str], body: str, *, width: int
) -> None:
    """One record in full: its fields, its headers (every value escaped), then its body."""
    for name, value in fields.items():
        print(f"{name + ':':<{width}}{'' if value is None else shown(str(value))}")
    for name, value in headers.items():
        print(f"{'header:':<{width}}{shown(name)}: {shown(value)}")
    print()
    print(body)


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
    _print_detail(record.to_json(), record.headers, body, width=18)
    return 0


def add_window_options(parser: argparse.ArgumentParser) -> None:
    """``--since`` and ``--until``: a window on the time callbacks were first received."""
    parser.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="first received at or after TIME: ISO 8601 (UTC unless a zone is given) or a "
        "duration ago (2h, 7d)",
    )
    parser.add_argument(
        "--until", type=moment, metavar="TIME", help="first received before TIME (as --since)"
    )


async def _selected(store: CallbackStore, args: argparse.Namespace) -> list[StoredCallback]:
    """The callbacks ``retry``'s filters select, oldest first, each once."""
    filtering = bool(args.states or args.event or args.since or args.until)
    states: list[State] = list(args.states or [])
    if args.all_state is not None:
        states.append(args.all_state)
    if filtering and not states:
        states = ["failed", "dead", "processed"] if args.force else ["failed", "dead"]
    found: dict[str, StoredCallback] = {}
    for state in dict.fromkeys(states):
        for record in await store.list_callbacks(
            state=state, event=args.event, since=args.since, until=args.until
        ):
            found[record.key] = record
    return sorted(found.values(), key=lambda record: (record.received_at, record.key))


def run_inbox_retry(args: argparse.Namespace) -> int:
    """Reset callbacks for another try; run them now when a handler is given."""
    filtering = bool(args.states or args.event or args.since or args.until)
    if not args.keys and args.all_state is None and not filtering:
        raise ConfigurationError(
            "name the callbacks to retry, or select them: --all failed|dead, --state, "
            "--event, --since, --until"
        )
    if args.since and args.until and args.since >= args.until:
        raise ConfigurationError("--since must be before --until")
    handler = None if args.dry_run else handler_from_args(args)
    # The clock and the store's errors: loaded for this action only.
    from runflow_callbacks._time import utc_now  # noqa: PLC0415
    from runflow_callbacks.stores import UnknownCallbackError  # noqa: PLC0415

    async def action(store: CallbackStore) -> int:
        keys = dict.fromkeys(args.keys)
        for record in await _selected(store, args):
            keys.setdefault(record.key)
        if args.dry_run:
            return await _dry_run(store, list(keys), force=args.force)
        processor = processor_for(store, handler)
        status = 0
        for key in keys:
            try:
                if processor is not None:
                    # Only a run that returned succeeded: failed, dead, duplicate (it was
                    # processed already, so nothing ran), in_progress or unhandled did not.
                    outcome = await processor.retry(key, force=args.force)
                    print(f"{shown(key)}: {outcome.status}")
                    succeeded = outcome.status == "processed"
                elif await store.reset_for_retry(key, now=utc_now(), force=args.force):
                    print(f"{shown(key)}: due again (a running 'serve --inbox' worker will run it)")
                    succeeded = True
                else:
                    print(f"{shown(key)}: not reset ({await _why_not(store, key)})")
                    succeeded = False
            except UnknownCallbackError:
                print(f"{shown(key)}: no such callback", file=sys.stderr)
                succeeded = False
            status |= 0 if succeeded else 1
        return status

    return run_with_store(args, action, create=False)


async def _why_not(store: CallbackStore, key: str) -> str:
    record = await store.get(key)
    if record is not None and record.pruned:
        return "pruned: its body is gone"
    if record is not None and record.state == "processed":
        return "already processed; --force runs it again"
    return "running right now"


async def _dry_run(store: CallbackStore, keys: list[str], *, force: bool) -> int:
    """Print what ``retry`` would do with ``keys``; change nothing."""
    from runflow_callbacks._time import utc_now  # noqa: PLC0415
    from runflow_callbacks.stores._state import resettable  # noqa: PLC0415

    now, count = utc_now(), 0
    for key in keys:
        record = await store.get(key)
        if record is None:
            print(f"{shown(key)}: no such callback", file=sys.stderr)
            continue
        if resettable(
            record.state, record.lease_expires_at, now, force=force, pruned=record.pruned
        ):
            count += 1
            print(
                f"would retry {shown(key)} ({shown(record.state)}, {shown(record.event)}, "
                f"received {_when(record)})"
            )
        else:
            print(f"would not retry {shown(key)}: {await _why_not(store, key)}")
    print(f"{count} callback(s) would be retried (dry run: nothing changed)")
    return 0


def run_inbox_prune(args: argparse.Namespace) -> int:
    """Make tombstones of old finished callbacks; remove the oldest tombstones."""
    from runflow_callbacks._time import utc_now  # noqa: PLC0415
    from runflow_callbacks.defaults import DEFAULT_TOMBSTONE_RETENTION  # noqa: PLC0415

    horizon = args.tombstones_older_than or DEFAULT_TOMBSTONE_RETENTION
    if horizon < args.older_than:
        raise ConfigurationError("--tombstones-older-than must not be shorter than --older-than")

    async def action(store: CallbackStore) -> dict[str, int]:
        now = utc_now()
        result = await store.prune(
            before=now - args.older_than,
            now=now,
            states=args.states or ("processed", "dead"),
            tombstones_before=now - horizon,
        )
        return {"pruned": result.pruned, "tombstones_removed": result.removed}

    counts = run_with_store(args, action, create=False)
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"pruned {counts['pruned']} callback(s): bodies and headers removed, tombstones "
            f"kept; removed {counts['tombstones_removed']} tombstone(s)"
        )
    return 0


def run_inbox_rejected(args: argparse.Namespace) -> int:
    """List the kept rejected requests, newest first (or show one)."""

    async def action(store: CallbackStore) -> list[RejectedRequest]:
        if args.show is not None:
            one = await store.get_rejected(args.show)
            if one is None:
                raise ConfigurationError(f"no rejected request is kept under id {args.show!r}")
            return [one]
        return await store.list_rejected(limit=args.limit)

    requests = run_with_store(args, action, create=False)
    if args.show is not None:
        [request] = requests
        if args.json:
            print(json.dumps(request.to_json(body=True)))
            return 0
        body = request.body.decode("utf-8", errors="replace")
        _print_detail(request.to_json(), request.headers, body, width=14)
        return 0
    if args.json:
        print(json.dumps([request.to_json() for request in requests], indent=2))
        return 0
    if not requests:
        print("no rejected requests kept (serve --keep-rejected N keeps them)")
        return 0
    rows = [("ID", "RECEIVED (UTC)", "REASON", "BYTES", "REPLAYED", "REQUEST ID")]
    rows += [
        (
            shown(request.id),
            _stamp(request.received_at),
            shown(request.reason),
            f"{request.body_bytes}{' (cut)' if request.truncated else ''}",
            "yes" if request.replayed_at is not None else "no",
            shown(request.headers.get("runflow-request-id")),
        )
        for request in requests
    ]
    _print_table(rows)
    return 0


def run_inbox_replay_rejected(args: argparse.Namespace) -> int:
    """Verify kept rejected requests again; process those that verify, exactly once."""
    if not args.ids and not args.all:
        raise ConfigurationError(
            "name the rejected requests to replay (see 'inbox rejected'), or pass --all"
        )
    secrets = secrets_from_args(args)
    handler = handler_from_args(args)
    # The engine and the verifier: for this action only.
    from runflow_callbacks.processing import CallbackProcessor  # noqa: PLC0415
    from runflow_callbacks.rejected import replay  # noqa: PLC0415
    from runflow_callbacks.verifier import Verifier  # noqa: PLC0415

    verifier = Verifier(secrets)

    async def action(store: CallbackStore) -> int:
        ids: list[str] = list(dict.fromkeys(args.ids))
        if args.all:
            for request in reversed(await store.list_rejected()):  # oldest first
                if request.id is not None and request.replayed_at is None and request.id not in ids:
                    ids.append(request.id)
        processor = CallbackProcessor(store, handler)
        status = 0
        for request_id in ids:
            result = await replay(
                store, request_id, verifier=verifier, processor=processor, run=handler is not None
            )
            if result.status == "replayed":
                print(f"{shown(request_id)}: verified; {result.outcome} ({shown(result.key)})")
                ok = result.outcome in {"processed", "recorded", "duplicate", "unhandled"}
            elif result.status == "unverified":
                print(f"{shown(request_id)}: still refused ({result.reason})")
                ok = False
            elif result.status == "truncated":
                print(f"{shown(request_id)}: only part of its body was kept; cannot be replayed")
                ok = False
            else:
                print(f"{shown(request_id)}: no such rejected request", file=sys.stderr)
                ok = False
            status |= 0 if ok else 1
        if not ids:
            print("nothing to replay: no kept rejected request waits for a replay")
        return status

    return run_with_store(args, action, create=False)


def _stamp(moment_: datetime) -> str:
    return moment_.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment_.microsecond // 1000:03d}"


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


def run_inbox_web(args: argparse.Namespace) -> int:
    """Serve the inbox pages until interrupted."""
    # The pages (starlette) and their checks: for this action only.
    from runflow_callbacks.web import check_token, is_loopback  # noqa: PLC0415

    if args.token is not None:
        token: str | None = args.token
        origin = "--token"
    else:
        token = os.environ.get(WEB_TOKEN_ENV) or None
        origin = f"${WEB_TOKEN_ENV}"
    if token is not None:
        try:
            check_token(token)
        except ConfigurationError as error:
            raise ConfigurationError(f"{origin}: {error}") from None
    elif not is_loopback(args.host):
        raise ConfigurationError(
            f"--host {shown(args.host)} is not a loopback address: pass --token (or set "
            f"{WEB_TOKEN_ENV}) so that every request must carry it"
        )
    if args.handler is not None and not args.allow_retry:
        raise ConfigurationError("--handler runs retried callbacks: add --allow-retry")
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ConfigurationError(
            "inbox web needs uvicorn: pip install 'runflow-callbacks[serve]'"
        ) from None
    import logging  # noqa: PLC0415 - the retries' log lines

    from runflow_callbacks.stores import mask_url  # noqa: PLC0415
    from runflow_callbacks.web import create_web_app  # noqa: PLC0415

    handler = handler_from_args(args)

    async def check(store: CallbackStore) -> None:
        await store.stats()  # a store that does not exist, or is down, is one line now

    run_with_store(args, check, create=False)
    app = create_web_app(
        open_store_from_args(args, create=False),
        handler=handler,
        allow_retry=args.allow_retry,
        token=token,
        page_size=args.page_size,
        label=mask_url(args.store),
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    mode = "retry allowed" if args.allow_retry else "read-only"
    access = "token required" if token is not None else "loopback only"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"runflow-callbacks inbox web: http://{host}:{args.port}/ ({mode}; {access}; "
        f"store {mask_url(args.store)})",
        file=sys.stderr,
        flush=True,
    )
    # No access log: a first request carries ?token=, which must never be written anywhere.
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()
    return 0
