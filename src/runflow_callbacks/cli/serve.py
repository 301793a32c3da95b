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

Several senders, each on its own path with its own secrets and handler, come from ``--config
FILE`` (TOML: :func:`runflow_callbacks.senders.load_config`) and the ``--sender*`` flags::

    runflow-callbacks serve --config runflow-callbacks.toml
    runflow-callbacks serve --sender prod=/callbacks/prod --sender-secrets-env prod=PROD_SECRETS \
        --sender-handler prod=app:handle_prod --sender-option prod.mode=inbox

A flag (or its variable) wins over the file; a sender's own setting over a top-level one.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

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
    whole_number,
)
from runflow_callbacks.defaults import (
    DEFAULT_CALLBACK_PATH,
    DEFAULT_TOMBSTONE_RETENTION,
    ENV_PREFIX,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.senders import Sender, ServeConfig, Setting

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
    _add_hand_off_options(serve)
    add_receiver_options(serve)
    add_server_options(serve)
    _add_sender_options(serve)
    _record_given_flags(serve)
    serve.set_defaults(func=_check_then_serve)


def _add_sender_options(serve: argparse.ArgumentParser) -> None:
    """``--config`` and the ``--sender*`` flags: several senders on one receiver."""
    group = serve.add_argument_group(
        "several senders",
        "each sender has its path, secrets, handler and options; the file's are overridden "
        "by these flags, a flag naming a sender the file does not have adds it",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(ENV_PREFIX + "CONFIG"),
        help="a TOML file of settings and [[sender]] tables (see the README; default: "
        f"${ENV_PREFIX}CONFIG, else none)",
    )
    group.add_argument(
        "--sender",
        action="append",
        dest="sender_paths",
        metavar="NAME=PATH",
        help="a sender taking callbacks on PATH (repeatable); or a new path for one of the file",
    )
    group.add_argument(
        "--sender-secrets-env",
        action="append",
        metavar="NAME=VARIABLE",
        help="the variable holding the sender's comma-separated secrets (preferred)",
    )
    group.add_argument(
        "--sender-secret",
        action="append",
        metavar="NAME=SECRET",
        help="one of the sender's secrets (repeatable; visible in the process list: prefer "
        "--sender-secrets-env)",
    )
    group.add_argument(
        "--sender-handler",
        action="append",
        metavar="NAME=MODULE:FUNCTION",
        help="the sender's handler (default: --handler; none: its callbacks are recorded only)",
    )
    group.add_argument(
        "--sender-option",
        action="append",
        metavar="NAME.OPTION=VALUE",
        help="one receiver option of one sender, by its option name, as its flag spells the "
        "value (prod.mode=inbox, prod.max_body_bytes=1048576, prod.lease=60)",
    )


_RECORDING: dict[type[argparse.Action], type[argparse.Action]] = {}


def _record_given_flags(parser: argparse.ArgumentParser) -> None:
    """Make every option of ``parser`` note its ``dest`` in ``args.given_flags`` when given on
    the command line, so that ``--config`` knows which of the file's settings a flag overrides
    (a default, even one read from a variable, says nothing about that)."""
    parser.set_defaults(given_flags=frozenset())
    for action in parser._actions:  # private, but argparse lists its actions nowhere else
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            action.__class__ = _recording(type(action))


def _recording(kind: type[argparse.Action]) -> type[argparse.Action]:
    known = _RECORDING.get(kind)
    if known is not None:
        return known

    def __call__(  # noqa: N807 - the method argparse calls
        self: argparse.Action,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.given_flags = namespace.given_flags | {self.dest}
        kind.__call__(self, parser, namespace, values, option_string)

    made: type[argparse.Action] = type(kind.__name__, (kind,), {"__call__": __call__})
    _RECORDING[kind] = made
    return made


def _add_hand_off_options(serve: argparse.ArgumentParser) -> None:
    """``--hand-off`` and what it needs, each with its variable."""
    group = serve.add_argument_group(
        "hand-off to a queue engine",
        "record each callback, queue its job and answer once both hold; the handler runs in "
        "the engine's workers (runflow_callbacks.handoff.workers)",
    )
    group.add_argument(
        "--hand-off",
        choices=["celery", "procrastinate"],
        default=os.environ.get(ENV_PREFIX + "HAND_OFF"),
        help="the queue engine (procrastinate: on the PostgreSQL store's database; default: "
        f"${ENV_PREFIX}HAND_OFF, else none)",
    )
    group.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get(ENV_PREFIX + "BROKER"),
        help=f"with --hand-off celery: the broker URL (default: ${ENV_PREFIX}BROKER)",
    )
    group.add_argument(
        "--hand-off-task",
        metavar="NAME",
        default="runflow_callbacks.run_callback",
        help="the task the workers registered (default: runflow_callbacks.run_callback)",
    )
    group.add_argument(
        "--hand-off-queue", metavar="NAME", help="the queue to send jobs to (default: the engine's)"
    )


def _hand_off(args: argparse.Namespace) -> Any:
    """The hand-off ``--hand-off`` asks for, or None; its settings are checked here."""
    if args.hand_off is None:
        if args.hand_off_queue:
            raise ConfigurationError("--hand-off-queue needs --hand-off")
        return None
    if args.option_mode == "inbox":
        raise ConfigurationError(
            "--hand-off queues each callback: the engine's workers run it, not --inbox"
        )
    if getattr(args, "sender_list", None):
        raise ConfigurationError("--hand-off takes one sender (no --config senders or --sender)")
    if args.handler is not None:
        from runflow_callbacks.app import load_handler  # noqa: PLC0415 - checked before serving

        load_handler(args.handler)  # the workers import it: fail here, not in every job
    if args.hand_off == "celery":
        if not args.broker:
            raise ConfigurationError(
                f"--hand-off celery needs --broker URL (or ${ENV_PREFIX}BROKER)"
            )
        try:
            import celery  # noqa: PLC0415 - the celery extra

            from runflow_callbacks.handoff.celery import CeleryHandOff  # noqa: PLC0415
        except ImportError:
            raise ConfigurationError(
                "--hand-off celery needs Celery: pip install 'runflow-callbacks[celery]'"
            ) from None
        app = celery.Celery("runflow-callbacks", broker=args.broker)
        return CeleryHandOff(app, task_name=args.hand_off_task, queue=args.hand_off_queue)
    if args.broker:
        raise ConfigurationError("--broker is for --hand-off celery")
    if args.store.split("://", 1)[0].lower() not in {"postgresql", "postgres"}:
        raise ConfigurationError(
            "--hand-off procrastinate needs the PostgreSQL store (--store postgresql://...): "
            "the job is deferred in the transaction that records the callback"
        )
    try:
        import procrastinate  # noqa: PLC0415 - the procrastinate extra

        from runflow_callbacks.handoff.procrastinate import (  # noqa: PLC0415
            ProcrastinateHandOff,
        )
    except ImportError:
        raise ConfigurationError(
            "--hand-off procrastinate needs procrastinate: "
            "pip install 'runflow-callbacks[procrastinate]'"
        ) from None
    engine = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=args.store))
    return ProcrastinateHandOff(engine, task_name=args.hand_off_task, queue=args.hand_off_queue)


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
        type=whole_number,
        default=os.environ.get(ENV_PREFIX + "KEEP_REJECTED", "0"),
        metavar="N",
        help="keep the last N rejected requests in the store, for 'inbox rejected' and "
        f"'inbox replay-rejected' (default: ${ENV_PREFIX}KEEP_REJECTED, else 0: none)",
    )
    group.add_argument(
        "--keep-rejected-bytes",
        type=whole_number,
        default=os.environ.get(ENV_PREFIX + "KEEP_REJECTED_BYTES", "16777216"),
        metavar="N",
        help="the most body bytes kept over all kept rejected requests, each getting N / "
        "--keep-rejected of them (a body cut shorter is shown, never replayed; default: "
        f"${ENV_PREFIX}KEEP_REJECTED_BYTES, else 16 MiB)",
    )


def _check_then_serve(args: argparse.Namespace) -> int:
    """:func:`run_serve`, once the store URL is known to be usable: a driver that is not
    installed or a URL it refuses is one line, not a traceback from inside the server."""
    _plan(args)
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
    # The receiver service (starlette, pydantic, anyio): for this command only.
    from runflow_callbacks.app import create_app  # noqa: PLC0415

    _plan(args)
    if args.sender_list:
        return _serve(args, uvicorn, _several(args, args.sender_list))
    secrets = secrets_from_args(args)
    hand_off = _hand_off(args)
    app = create_app(
        secrets=secrets,
        store=args.store,
        handler=args.handler,
        hand_off=hand_off,
        path=args.path,
        namespace=args.namespace,
        metrics=args.metrics,
        retention=args.retention,
        tombstone_retention=args.tombstone_retention or DEFAULT_TOMBSTONE_RETENTION,
        keep_rejected=args.keep_rejected,
        keep_rejected_bytes=args.keep_rejected_bytes,
        **_options(args),
    )
    mode = "record only" if args.handler is None else app.state.receiver.options.mode
    if hand_off is not None:
        mode = f"hand-off to {args.hand_off}; workers run {args.handler or 'their handler'}"
    banner = (
        f"runflow-callbacks serve: http://{args.host}:{args.port}{args.path} "
        f"({mode}; {len(secrets)} secret(s); store {_scheme(args.store)})"
    )
    return _serve(args, uvicorn, (app, banner))


def _serve(args: argparse.Namespace, uvicorn: Any, built: tuple[Any, str]) -> int:
    """Log the banner, then run ``app`` with uvicorn until interrupted."""
    import logging  # noqa: PLC0415

    app, banner = built
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


# --- several senders: --config and the --sender flags ----------------------------------------

#: The file's settings of serve's own: setting -> (dest, the variable that also gives it).
_SETTINGS: Final[dict[str, tuple[str, str | None]]] = {
    "store": ("store", ENV_PREFIX + "STORE"),
    "namespace": ("namespace", ENV_PREFIX + "NAMESPACE"),
    "host": ("host", None),
    "port": ("port", None),
    "log_level": ("log_level", None),
    "log_format": ("log_format", ENV_PREFIX + "LOG_FORMAT"),
    "metrics": ("metrics", None),
    "handler": ("handler", None),
    "retention": ("retention", ENV_PREFIX + "RETENTION"),
    "tombstone_retention": ("tombstone_retention", ENV_PREFIX + "TOMBSTONE_RETENTION"),
    "keep_rejected": ("keep_rejected", ENV_PREFIX + "KEEP_REJECTED"),
    "keep_rejected_bytes": ("keep_rejected_bytes", ENV_PREFIX + "KEEP_REJECTED_BYTES"),
    "head_timeout": ("head_timeout", ENV_PREFIX + "HEAD_TIMEOUT"),
    "max_connections": ("max_connections", ENV_PREFIX + "MAX_CONNECTIONS"),
}
_CHOICES: Final = {
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
}


def _plan(args: argparse.Namespace) -> None:
    """Read ``--config`` and the ``--sender*`` flags once: the file's settings go into ``args``
    where no flag or variable gave one, and ``args.sender_list`` is the senders (empty: the
    one sender of ``--secret`` and ``--path``, exactly as without a file)."""
    if getattr(args, "planned", False):
        return
    args.planned = True
    args.sender_list = []
    args.file_options = {}
    args.handler_setting = None
    if args.config is None and not _sender_flags_given(args):
        return
    from runflow_callbacks.senders import ServeConfig, Setting, load_config  # noqa: PLC0415

    config = ServeConfig() if args.config is None else load_config(args.config)
    _read_file_options(config)
    given: frozenset[str] = getattr(args, "given_flags", frozenset())
    for key, setting in config.settings.items():
        dest, variable = _SETTINGS[key]
        if dest in given or (variable is not None and variable in os.environ):
            continue  # the command line says otherwise
        setattr(args, dest, _setting(key, setting))
        if key == "handler":
            args.handler_setting = setting
    if args.handler is not None and args.handler_setting is None:
        args.handler_setting = Setting(args.handler, "--handler")
    args.file_options = {name: setting.value for name, setting in config.options.items()}
    _apply_sender_flags(args, config)
    if not config.senders:
        return
    if args.secrets or "path" in given:
        raise ConfigurationError(
            "--secret and --path are for one sender; with senders, give each its "
            "secrets and path ([[sender]] in the file, or --sender NAME=PATH)"
        )
    args.sender_list = config.build_senders(environ=os.environ, handler=args.handler_setting)


def _read_file_options(config: ServeConfig) -> None:
    """The file's receiver options as library values, each read as its flag reads it."""
    from runflow_callbacks.cli._options import read_option  # noqa: PLC0415
    from runflow_callbacks.senders import option_text  # noqa: PLC0415

    tables = [config.options, *(spec.options for spec in config.senders.values())]
    for options in tables:
        for name, setting in options.items():
            setting.value = read_option(name, option_text(setting.value), where=setting.where)


def _sender_flags_given(args: argparse.Namespace) -> bool:
    names = ("sender_paths", "sender_secrets_env", "sender_secret", "sender_handler")
    return any(getattr(args, name, None) for name in (*names, "sender_option"))


def _setting(key: str, setting: Setting) -> Any:
    """A top-level setting of the file as its flag's type gives it."""
    from runflow_callbacks.cli._common import port_number  # noqa: PLC0415 - see the top
    from runflow_callbacks.cli._options import span  # noqa: PLC0415

    value = setting.value
    if key == "head_timeout":
        if not 0 <= value < float("inf"):
            raise ConfigurationError(f"{setting.where}: must be a number of seconds >= 0")
        return timedelta(seconds=value)
    try:
        if key == "port":
            return port_number(str(value))
        if key in {"retention", "tombstone_retention"}:
            return span(str(value))
        if key in {"keep_rejected", "keep_rejected_bytes", "max_connections"}:
            return whole_number(str(value))
    except argparse.ArgumentTypeError as error:
        raise ConfigurationError(f"{setting.where}: {error}") from None
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigurationError(
            f"{setting.where}: must be one of {', '.join(_CHOICES[key])}, not {value!r}"
        )
    return value


def _pair(text: str, flag: str, shape: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise ConfigurationError(f"{flag} takes {shape}, not {_masked(flag, text)!r}")
    return name, value


def _masked(flag: str, text: str) -> str:
    # A --sender-secret given the wrong way round must not print the secret.
    return "NAME=..." if flag == "--sender-secret" else text


def _apply_sender_flags(args: argparse.Namespace, config: ServeConfig) -> None:
    """The ``--sender*`` flags, over what the file says of each sender."""
    from runflow_callbacks.cli._options import read_option  # noqa: PLC0415
    from runflow_callbacks.senders import SHARED_OPTIONS, SenderSpec, Setting  # noqa: PLC0415

    for text in args.sender_paths or []:
        name, path = _pair(text, "--sender", "NAME=PATH")
        where = f"--sender {name}"
        if not path.startswith("/"):
            raise ConfigurationError(f"{where}: the callback path must start with '/'")
        spec = config.senders.setdefault(name, SenderSpec(name=name, where=where))
        spec.path = Setting(path, where)

    def sender(flag: str, name: str) -> SenderSpec:
        spec = config.senders.get(name)
        if spec is None:
            raise ConfigurationError(
                f"{flag} {name}: no sender {name!r}: add --sender {name}=/PATH, or a "
                "[[sender]] of that name to the file"
            )
        return spec

    for text in args.sender_secrets_env or []:
        name, variable = _pair(text, "--sender-secrets-env", "NAME=VARIABLE")
        spec = sender("--sender-secrets-env", name)
        spec.secrets, spec.secrets_env = None, Setting(variable, f"--sender-secrets-env {name}")
    secrets: dict[str, list[str]] = {}
    for text in args.sender_secret or []:
        name, value = _pair(text, "--sender-secret", "NAME=SECRET")
        secrets.setdefault(name, []).append(value)
    for name, values in secrets.items():
        spec = sender("--sender-secret", name)
        if args.sender_secrets_env and any(
            item.partition("=")[0] == name for item in args.sender_secrets_env
        ):
            raise ConfigurationError(
                f"--sender-secret {name}: give --sender-secret or --sender-secrets-env, not both"
            )
        spec.secrets, spec.secrets_env = Setting(values, f"--sender-secret {name}"), None
    for text in args.sender_handler or []:
        name, handler = _pair(text, "--sender-handler", "NAME=MODULE:FUNCTION")
        sender("--sender-handler", name).handler = Setting(handler, f"--sender-handler {name}")
    for text in args.sender_option or []:
        target, value = _pair(text, "--sender-option", "NAME.OPTION=VALUE")
        name, dot, option = target.rpartition(".")
        where = f"--sender-option {target}"
        if not dot or not name:
            raise ConfigurationError(f"--sender-option takes NAME.OPTION=VALUE, not {text!r}")
        if option in SHARED_OPTIONS:
            raise ConfigurationError(f"{where}: shared by every sender: use its own flag")
        spec = sender("--sender-option", name)
        spec.options[option] = Setting(read_option(option, value, where=where), where)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The receiver options: the file's top-level ones, under the flags and variables."""
    return {**getattr(args, "file_options", {}), **options_from_args(args)}


def _several(args: argparse.Namespace, senders: list[Sender]) -> tuple[Any, str]:
    """The application of several senders, and its banner (names and paths, no secret)."""
    from runflow_callbacks.app import create_app  # noqa: PLC0415

    app = create_app(
        senders=senders,
        store=args.store,
        namespace=args.namespace,
        metrics=args.metrics,
        retention=args.retention,
        tombstone_retention=args.tombstone_retention or DEFAULT_TOMBSTONE_RETENTION,
        keep_rejected=args.keep_rejected,
        keep_rejected_bytes=args.keep_rejected_bytes,
        **_options(args),
    )
    described = []
    for name, receiver in app.state.router.receivers.items():
        mode = "record only" if receiver.handlers.empty else receiver.options.mode
        count = len(receiver.verifier.secrets)
        described.append(f"{name} {_path_of(senders, name)} ({mode}; {count} secret(s))")
    banner = (
        f"runflow-callbacks serve: http://{args.host}:{args.port} "
        f"(store {_scheme(args.store)}; {len(senders)} sender(s): {', '.join(described)})"
    )
    return app, banner


def _path_of(senders: list[Sender], name: str) -> str:
    return next(sender.path for sender in senders if sender.name == name)
