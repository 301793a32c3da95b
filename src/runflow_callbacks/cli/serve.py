"""``runflow-callbacks serve``: the receiver as a program.

::

    runflow-callbacks serve --store sqlite:///./runflow-callbacks.db --handler app:handle

Secrets come from ``--secret`` (repeatable) or ``RUNFLOW_CALLBACK_SECRETS``; the store from
``--store`` (default ``sqlite:///./runflow-callbacks.db``), within ``--namespace`` (or
``RUNFLOW_CALLBACK_NAMESPACE``: the table or key prefix, so that several receivers can share
one server). A handler is ``module:function`` taking the
:class:`~runflow_callbacks.context.CallbackContext`. Every receiver option has a flag and
a ``RUNFLOW_CALLBACK_*`` variable (see :mod:`runflow_callbacks.cli._options`). What ``serve``
recorded is looked at with ``inbox`` (:mod:`runflow_callbacks.cli.inbox`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

from runflow_callbacks.cli._common import (
    add_handler_option,
    add_secret_options,
    add_store_options,
    check_store_url,
    port_number,
    secrets_from_args,
)
from runflow_callbacks.cli._options import (
    add_receiver_options,
    add_server_options,
    options_from_args,
    server_bounds,
    span,
)
from runflow_callbacks.defaults import (
    DEFAULT_CALLBACK_PATH,
    DEFAULT_TOMBSTONE_RETENTION,
    ENV_PREFIX,
)
from runflow_callbacks.errors import ConfigurationError

__all__ = ["register", "run_serve"]

_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the command line."""
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
    add_store_options(serve)
    add_handler_option(serve, what="without it, callbacks are recorded in the inbox")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=port_number,
        default=8000,
        help="port (default: 8000; 0: any free port, named in uvicorn's log)",
    )
    serve.add_argument(
        "--path",
        default=DEFAULT_CALLBACK_PATH,
        help=f"the callback path (default: {DEFAULT_CALLBACK_PATH})",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    serve.add_argument(
        "--log-format",
        default=os.environ.get("RUNFLOW_CALLBACK_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or one JSON object per line, uvicorn's included "
        "(default: $RUNFLOW_CALLBACK_LOG_FORMAT, else text)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        help="answer GET /metrics (Prometheus) on the serving port; needs the metrics extra. "
        "Keep it off the public path: route only the callback path to serve from outside",
    )
    _add_operation_options(serve)
    add_receiver_options(serve)
    add_server_options(serve)
    serve.set_defaults(func=_check_then_serve)


def _add_operation_options(serve: argparse.ArgumentParser) -> None:
    """Retention and kept rejected requests, each with its variable."""
    group = serve.add_argument_group("operations", f"each also read from {ENV_PREFIX}<NAME>")
    group.add_argument(
        "--retention",
        type=span,
        default=os.environ.get(ENV_PREFIX + "RETENTION"),
        metavar="DURATION",
        help="prune processed and dead callbacks finished longer ago than this, in the "
        "background, keeping tombstones that still deduplicate (7d, 12h; default: "
        f"${ENV_PREFIX}RETENTION, else never)",
    )
    group.add_argument(
        "--tombstone-retention",
        type=span,
        default=os.environ.get(ENV_PREFIX + "TOMBSTONE_RETENTION"),
        metavar="DURATION",
        help="with --retention: remove tombstones not updated for this long (default: "
        f"${ENV_PREFIX}TOMBSTONE_RETENTION, else 90d)",
    )
    group.add_argument(
        "--keep-rejected",
        type=_count,
        default=os.environ.get(ENV_PREFIX + "KEEP_REJECTED", "0"),
        metavar="N",
        help="keep the last N rejected requests in the store, for 'inbox rejected' and "
        f"'inbox replay-rejected' (default: ${ENV_PREFIX}KEEP_REJECTED, else 0: none)",
    )
    group.add_argument(
        "--keep-rejected-bytes",
        type=_count,
        default=os.environ.get(ENV_PREFIX + "KEEP_REJECTED_BYTES", "16777216"),
        metavar="N",
        help="the most body bytes kept over all kept rejected requests, each getting N / "
        "--keep-rejected of them (a body cut shorter is shown, never replayed; default: "
        f"${ENV_PREFIX}KEEP_REJECTED_BYTES, else 16 MiB)",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _check_then_serve(args: argparse.Namespace) -> int:
    """:func:`run_serve`, once the store URL is known to be usable: a driver that is not
    installed or a URL it refuses is one line, not a traceback from inside the server."""
    check_store_url(args)
    if args.tombstone_retention is not None and args.retention is None:
        raise ConfigurationError("--tombstone-retention needs --retention")
    if (
        args.retention is not None
        and (args.tombstone_retention or DEFAULT_TOMBSTONE_RETENTION) < args.retention
    ):
        raise ConfigurationError("--tombstone-retention must not be shorter than --retention")
    return run_serve(args)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the receiver until interrupted."""
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ConfigurationError(
            "serve needs uvicorn: pip install 'runflow-callbacks[serve]'"
        ) from None
    # The receiver service (starlette, pydantic, anyio) and logging: for this command only.
    import logging  # noqa: PLC0415

    from runflow_callbacks.app import create_app  # noqa: PLC0415

    secrets = secrets_from_args(args)
    app = create_app(
        secrets=secrets,
        store=args.store,
        handler=args.handler,
        path=args.path,
        namespace=args.namespace,
        metrics=args.metrics,
        retention=args.retention,
        tombstone_retention=args.tombstone_retention or DEFAULT_TOMBSTONE_RETENTION,
        keep_rejected=args.keep_rejected,
        keep_rejected_bytes=args.keep_rejected_bytes,
        **options_from_args(args),
    )
    mode = "record only" if args.handler is None else app.state.receiver.options.mode
    banner = (
        f"runflow-callbacks serve: http://{args.host}:{args.port}{args.path} "
        f"({mode}; {len(secrets)} secret(s); store {_scheme(args.store)})"
    )
    uvicorn_logging: dict[str, object] = {}
    if args.log_format == "json":
        import logging.config  # noqa: PLC0415

        from runflow_callbacks.logs import json_log_config  # noqa: PLC0415

        config_dict = json_log_config(args.log_level)
        logging.config.dictConfig(config_dict)
        uvicorn_logging["log_config"] = config_dict
        logging.getLogger("runflow_callbacks.serve").info(banner)
    else:
        logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
        print(banner, file=sys.stderr, flush=True)
    from runflow_callbacks.serving import server_config  # noqa: PLC0415 - needs uvicorn

    head_timeout, max_connections = server_bounds(args)
    config = server_config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        head_timeout=head_timeout,
        max_connections=max_connections,
        access_log=False,
        lifespan="on",
        **uvicorn_logging,
    )
    uvicorn.Server(config).run()
    return 0


def _scheme(url: str) -> str:
    # Never print the whole URL: it may hold a password.
    return url.split("://", 1)[0] + "://…" if "://" in url else "?"
