"""Several senders on one receiver: a path, secrets and handler per sender, one store.

>>> router = CallbackRouter(
...     [
...         Sender(name="prod", path="/callbacks/prod", secrets=["whsec_prod"], handler=handle),
...         Sender(name="staging", path="/callbacks/staging", secrets="whsec_staging",
...                handler=handle_staging, inbox=True, max_body_bytes=1 << 20),
...     ],
...     store=open_store("sqlite:///./runflow-callbacks.db"),
... )  # doctest: +SKIP

:class:`CallbackRouter` is an ASGI app that hands each request to the
:class:`~runflow_callbacks.receiver.CallbackReceiver` of the sender whose ``path`` is
``scope["path"]`` (404 ``not_found`` for any other path); ``create_app(senders=[...])`` and
``runflow-callbacks serve --config`` build one. Each sender has its own secrets (a request signed
with another sender's secret is 401 there), handler and receiver options; all of them share:

- the store: one inbox. Each sender's idempotency key is its ``key`` function's (by default
  :func:`~runflow_callbacks.keys.default_key`) behind ``"<name>/"``: ``prod/batch:0190...:
  batch.succeeded``. Two senders delivering the same batch id are two callbacks, and
  :func:`sender_of` reads back which sender took a callback from ``context.key`` or any stored
  key (``inbox list`` shows it too); the store's schema does not change.
- one inbox worker (``worker()``, or the ASGI lifespan): it claims whatever is due and runs it
  with the processor, hence the handler, lease, timeout, tries and backoff, of the sender named
  in its key. It runs when some sender with a handler is in inbox mode; then it also retries the
  failed callbacks of the sync senders, keeps what a sender without a handler recorded as
  ``unhandled`` (``inbox retry`` runs it later), and does the same with a key no sender claims.
- the metrics and the limits: ``max_unverified_bytes`` is one budget for every sender, and the
  worker's ``poll_interval`` and ``worker_batch_size`` are the router's; no sender sets them.

:func:`load_config` reads the TOML file of ``serve --config`` (its schema is in its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.answers import Outcome, send_answer, serve_lifespan
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.keys import bounded, check_key, default_key
from runflow_callbacks.options import ReceiverOptions, resolve
from runflow_callbacks.processing import work_until
from runflow_callbacks.reader import UnverifiedBudget
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.rejected import DEFAULT_KEEP_REJECTED_BYTES
from runflow_callbacks.verifier import Secret, Verifier

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping
    from pathlib import Path

    from starlette.types import Receive, Scope, Send
    from typing_extensions import Unpack

    from runflow_callbacks.handlers import Handler
    from runflow_callbacks.keys import KeyFunction
    from runflow_callbacks.metrics import CallbackMetrics
    from runflow_callbacks.models import CallbackPayload
    from runflow_callbacks.options import ReceiverArgs
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.tracing import CallbackTracing
    from runflow_callbacks.verifier import SecretsInput

__all__ = [
    "OPTION_TYPES",
    "SENDER_KEYS",
    "SENDER_SEPARATOR",
    "SERVE_KEYS",
    "SHARED_OPTIONS",
    "CallbackRouter",
    "Sender",
    "SenderSpec",
    "ServeConfig",
    "Setting",
    "load_config",
    "option_text",
    "sender_key",
    "sender_of",
]

logger = logging.getLogger("runflow_callbacks.senders")

#: Between a sender's name and the key its ``key`` function computed: ``prod/batch:...``.
SENDER_SEPARATOR: Final = "/"
#: The options every sender of one router shares: one memory budget, one inbox worker.
SHARED_OPTIONS: Final = frozenset({"max_unverified_bytes", "poll_interval", "worker_batch_size"})
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
_NOT_FOUND: Final = b'{"error":"not_found","detail":"no sender takes callbacks on this path"}'


def sender_of(key: str | None) -> str | None:
    """The name of the sender that took the callback stored under ``key`` (``context.key``),
    or None for a key without a sender's prefix (a receiver of one sender, or no store)."""
    if not key:
        return None
    name, separator, _ = key.partition(SENDER_SEPARATOR)
    return name if separator and _NAME.fullmatch(name) else None


def sender_key(name: str, key: KeyFunction = default_key) -> KeyFunction:
    """``key`` with ``"<name>/"`` in front of every key it computes (then bounded)."""

    def keyed(payload: CallbackPayload, body: bytes) -> str:
        return bounded(name + SENDER_SEPARATOR + check_key(key(payload, body)))

    keyed.__qualname__ = f"sender_key({name!r}, {getattr(key, '__qualname__', key)!r})"
    return keyed


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"a sender's name is 1 to 64 letters, digits, '_', '.' or '-' (first a letter or "
            f"digit), not {name!r}"
        )
    return name


def _check_path(path: object, *, who: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"{who}: the callback path must start with '/', not {path!r}")
    if path in _RESERVED_PATHS:
        raise ConfigurationError(f"{who}: {path} is the receiver's own; choose another path")
    return path


class Sender:
    """One sender of callbacks: where it posts, the secrets it signs with, what runs them.

    ``handler`` is a callable taking the :class:`~runflow_callbacks.context.CallbackContext` or
    a ``"module:function"`` string; without one its callbacks are only recorded (inbox mode).
    ``inbox=True`` is short for ``mode="inbox"``. Every option of
    :class:`~runflow_callbacks.options.ReceiverOptions` but :data:`SHARED_OPTIONS` may be given
    by keyword, on top of the router's. ``repr()`` never shows the secrets.
    """

    __slots__ = ("changes", "handler", "name", "path", "secrets")

    def __init__(
        self,
        *,
        name: str,
        path: str,
        secrets: SecretsInput | Verifier,
        handler: Handler | str | None = None,
        inbox: bool = False,
        **changes: Unpack[ReceiverArgs],
    ) -> None:
        self.name = _check_name(name)
        who = f"sender {name!r}"
        self.path = _check_path(path, who=who)
        shared = SHARED_OPTIONS & set(changes)
        if shared:
            raise ConfigurationError(
                f"{who}: {', '.join(sorted(shared))} is shared by every sender: set it once, "
                "for all of them"
            )
        if inbox:
            changes["mode"] = "inbox"
        try:
            ReceiverOptions().replace(**changes)  # checked now, whatever the router's options
        except ConfigurationError as error:
            raise ConfigurationError(f"{who}: {error}") from None
        self.secrets = secrets
        self.handler = handler
        self.changes: ReceiverArgs = changes

    def __repr__(self) -> str:
        return f"Sender(name={self.name!r}, path={self.path!r}, options={sorted(self.changes)})"


def _labelled(name: str, secrets: SecretsInput | Verifier) -> SecretsInput | Verifier:
    """Plain strings get the sender's name as label (``prod #0``), for logs and metrics."""
    if isinstance(secrets, str):
        return Secret(secrets, label=f"{name} #0")
    if isinstance(secrets, (list, tuple)) and secrets and all(type(s) is str for s in secrets):
        return [Secret(value, label=f"{name} #{i}") for i, value in enumerate(secrets)]
    return secrets


class CallbackRouter:
    """An ASGI app taking callbacks for several :class:`Sender` s, each on its own path.

    ``store``, ``metrics``, ``tracing``, ``keep_rejected`` and ``keep_rejected_bytes`` are those
    of :class:`~runflow_callbacks.receiver.CallbackReceiver`, shared by every sender; the
    receiver options (keywords or ``options=``) are every sender's defaults. ``receivers`` maps
    each sender's name to its receiver, to register more handlers
    (``router.receivers["prod"].on("batch.failed")``). Serve it as the whole app (its lifespan
    runs the worker), or mount each receiver with :meth:`routes` and run :meth:`worker`.
    """

    def __init__(
        self,
        senders: Iterable[Sender],
        *,
        store: CallbackStore | None = None,
        metrics: CallbackMetrics | None = None,
        tracing: CallbackTracing | None = None,
        options: ReceiverOptions | None = None,
        keep_rejected: int = 0,
        keep_rejected_bytes: int = DEFAULT_KEEP_REJECTED_BYTES,
        **changes: Unpack[ReceiverArgs],
    ) -> None:
        self.options = resolve(options, changes, who="CallbackRouter")
        self.senders: dict[str, Sender] = {}
        self.receivers: dict[str, CallbackReceiver] = {}
        self._by_path: dict[str, CallbackReceiver] = {}
        self._wakeup = asyncio.Event()
        budget = UnverifiedBudget.of(self.options.max_unverified_bytes)
        for sender in senders:
            if sender.name in self.senders:
                raise ConfigurationError(f"two senders are named {sender.name!r}")
            if sender.path in self._by_path:
                raise ConfigurationError(
                    f"senders {self._sender_at(sender.path)!r} and {sender.name!r} both take "
                    f"{sender.path}"
                )
            kept = (keep_rejected, keep_rejected_bytes)
            receiver = self._receiver(sender, store, metrics, tracing, kept)
            receiver.budget = budget
            self.senders[sender.name] = sender
            self.receivers[sender.name] = receiver
            self._by_path[sender.path] = receiver
        if not self.senders:
            raise ConfigurationError("a CallbackRouter needs at least one sender")
        self.store = store
        self._worker_running = False

    def _sender_at(self, path: str) -> str:
        return next(name for name, sender in self.senders.items() if sender.path == path)

    def _receiver(
        self,
        sender: Sender,
        store: CallbackStore | None,
        metrics: CallbackMetrics | None,
        tracing: CallbackTracing | None,
        kept: tuple[int, int],
    ) -> CallbackReceiver:
        handler = sender.handler
        if isinstance(handler, str):
            from runflow_callbacks.app import load_handler  # noqa: PLC0415 - app imports us

            handler = load_handler(handler, flag=f"sender {sender.name!r} handler")
        chosen = self.options.replace(**sender.changes)
        if handler is None and store is not None:
            chosen = chosen.replace(mode="inbox")  # record only, as create_app does
        chosen = chosen.replace(key=sender_key(sender.name, chosen.key))
        try:
            receiver = CallbackReceiver(
                secrets=_labelled(sender.name, sender.secrets),
                store=store,
                metrics=metrics,
                tracing=tracing,
                options=chosen,
                keep_rejected=kept[0],
                keep_rejected_bytes=kept[1],
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"sender {sender.name!r}: {error}") from None
        if handler is not None:
            receiver.on_any(handler)
        if receiver.processor is not None:
            # One worker serves every sender: whichever records wakes it.
            receiver.processor._wakeup = self._wakeup  # the package's own engine
        return receiver

    def receiver_for(self, path: str) -> CallbackReceiver | None:
        """The receiver of the sender taking callbacks on ``path``, or None."""
        return self._by_path.get(path)

    def sender_for(self, key: str | None) -> Sender | None:
        """The sender whose callback is stored under ``key`` (see :func:`sender_of`), or None."""
        name = sender_of(key)
        return None if name is None else self.senders.get(name)

    def routes(self) -> list[Any]:
        """A Starlette ``Route`` per sender, to mount in an application of your own (run
        :meth:`worker` in its lifespan then)."""
        from starlette.routing import Route  # noqa: PLC0415 - only for this use

        return [Route(sender.path, self.receivers[name]) for name, sender in self.senders.items()]

    # --- the one inbox worker ------------------------------------------------------------

    @property
    def runs_worker(self) -> bool:
        """Whether :meth:`worker` runs: a sender with a handler is in inbox mode."""
        return any(
            receiver.processor is not None
            and receiver.processor.mode == "inbox"
            and not receiver.handlers.empty
            for receiver in self.receivers.values()
        )

    async def run_due(self, *, limit: int | None = None) -> list[Outcome]:
        """Claim up to ``limit`` due callbacks of any sender and run each with its sender's
        processor (one worker pass)."""
        first = next(iter(self.receivers.values()))
        if first.processor is None:
            return []
        store = first.processor.store
        lease = max(r.options.lease for r in self.receivers.values())
        now = self.options.clock()
        claims = await store.claim_due(
            now=now, lease=lease, limit=limit or self.options.worker_batch_size
        )
        runs = []
        released: list[Outcome] = []
        for claim in claims:
            if claim.token is None:
                continue
            sender = self.sender_for(claim.record.key)
            processor = None if sender is None else self.receivers[sender.name].processor
            if processor is None:
                logger.warning(
                    "callback %r: no sender of this receiver takes its key; kept as unhandled",
                    claim.record.key,
                )
                await store.release(claim.record.key, claim.token, now=now)
                released.append(Outcome("unhandled", claim.record.key))
                continue
            runs.append(processor._run_stored(claim.record, claim.token))
        return [*released, *await asyncio.gather(*runs)]

    async def run_worker(self, *, stop: asyncio.Event) -> None:
        """Run due callbacks until ``stop`` is set, as
        :meth:`~runflow_callbacks.processing.CallbackProcessor.run_worker` does."""
        await work_until(
            stop,
            self._wakeup,
            self.run_due,
            interval=self.options.poll_interval.total_seconds(),
            size=self.options.worker_batch_size,
        )

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """Run the one inbox worker for the block (when :attr:`runs_worker`); rejected
        requests are written to the store at its end."""
        try:
            if not self.runs_worker or self._worker_running:
                yield
                return
            stop = asyncio.Event()
            task = asyncio.create_task(self.run_worker(stop=stop))
            self._worker_running = True
            try:
                yield
            finally:
                stop.set()
                self._worker_running = False
                await task
        finally:
            await self.flush_rejections()

    async def flush_rejections(self) -> None:
        """Write every sender's rejections counted since the last write to the store now."""
        for receiver in self.receivers.values():
            await receiver.flush_rejections()

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            receiver = self._by_path.get(scope["path"])
            if receiver is None:
                await send_answer(send, 404, _NOT_FOUND)
                return
            await receiver(scope, receive, send)
        elif scope["type"] == "lifespan":
            async with self.worker():
                await serve_lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


# --- the TOML file of serve --config ---------------------------------------------------------

#: The keys of a ``[[sender]]`` table besides the receiver options.
SENDER_KEYS: Final = ("name", "path", "secrets", "secrets_env", "handler")
#: Top-level keys of ``serve``'s own, with the TOML types each takes.
SERVE_KEYS: Final[dict[str, tuple[type, ...]]] = {
    "store": (str,),
    "namespace": (str,),
    "host": (str,),
    "port": (int,),
    "log_level": (str,),
    "log_format": (str,),
    "metrics": (bool,),
    "handler": (str,),
    "retention": (str, int, float),
    "tombstone_retention": (str, int, float),
    "keep_rejected": (int,),
    "keep_rejected_bytes": (int,),
    "head_timeout": (int, float),
    "max_connections": (int,),
}
#: Receiver options in the file, by name, with their TOML types (the value is then read as
#: its ``serve`` flag reads it: seconds, bytes, ``"2:600"``, ``"module:function"``).
OPTION_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "max_body_bytes": (int,),
    "allow_unsigned": (bool,),
    "body_timeout": (int, float),
    "max_unverified_bytes": (int,),
    "mode": (str,),
    "lease": (int, float),
    "handler_timeout": (int, float),
    "max_tries": (int,),
    "backoff": (int, float, str),
    "key": (str,),
    "poll_interval": (int, float),
    "worker_batch_size": (int,),
}
_TYPE_NAMES: Final = {str: "a string", int: "a whole number", float: "a number", bool: "true/false"}


@dataclass
class Setting:
    """One configured value and where it was said (``file.toml: sender.prod.handler``, or the
    flag), which every error about it starts with."""

    value: Any
    where: str


@dataclass
class SenderSpec:
    """A sender as the file and the flags describe it, before anything is imported."""

    name: str
    where: str
    path: Setting | None = None
    secrets: Setting | None = None
    secrets_env: Setting | None = None
    handler: Setting | None = None
    #: Receiver options: as the file wrote them, library values once ``serve`` read them.
    options: dict[str, Setting] = field(default_factory=dict)

    def secret_values(self, environ: Mapping[str, str]) -> list[Secret]:
        """This sender's secrets, labelled ``<name> <origin> <position>``; never echoed."""
        if self.secrets is not None:
            values: list[str] = list(self.secrets.value)
            origin, where = "secret", self.secrets.where
        elif self.secrets_env is not None:
            variable: str = self.secrets_env.value
            where = self.secrets_env.where
            values = [item.strip() for item in environ.get(variable, "").split(",")]
            values = [item for item in values if item]
            origin = f"${variable}"
            if not values:
                raise ConfigurationError(f"{where}: ${variable} is not set or empty")
        else:
            raise ConfigurationError(
                f'{self.where}: no secrets: set secrets_env = "VARIABLE" (or '
                f"--sender-secrets-env {self.name}=VARIABLE)"
            )
        secrets = []
        for position, value in enumerate(values):
            label = f"{self.name} {origin} {position}"
            try:
                secrets.append(Secret(value, label=label))
            except ConfigurationError as error:
                raise ConfigurationError(f"{where} (secret {position}): {error}") from None
        return secrets


@dataclass
class ServeConfig:
    """What a ``serve --config`` file says: ``serve``'s own settings, the receiver options
    every sender starts from, and the senders by name (in the file's order)."""

    file: str | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    options: dict[str, Setting] = field(default_factory=dict)
    senders: dict[str, SenderSpec] = field(default_factory=dict)

    def build_senders(
        self, *, environ: Mapping[str, str], handler: Setting | None = None
    ) -> list[Sender]:
        """The :class:`Sender` s described, their secrets read and handlers imported now;
        ``handler`` runs the callbacks of a sender that names none."""
        built = []
        for spec in self.senders.values():
            if spec.path is None:
                raise ConfigurationError(f"{spec.where}: no path: add --sender {spec.name}=/PATH")
            secrets = spec.secret_values(environ)
            chosen = spec.handler or handler
            changes: Any = {name: given.value for name, given in spec.options.items()}
            try:
                sender = Sender(
                    name=spec.name,
                    path=spec.path.value,
                    secrets=secrets,
                    handler=None if chosen is None else _load(chosen),
                    **changes,
                )
            except ConfigurationError as error:
                raise ConfigurationError(f"{spec.where}: {error}") from None
            built.append(sender)
        return built


def load_config(path: str | Path) -> ServeConfig:
    """Read and check the TOML file of ``runflow-callbacks serve --config``.

    Top level: ``serve``'s settings by their flag's name (``store``, ``namespace``, ``host``,
    ``port``, ``log_level``, ``log_format``, ``metrics``, ``handler`` (the handler of senders
    naming none), ``retention``, ``tombstone_retention``, ``keep_rejected``,
    ``keep_rejected_bytes``, ``head_timeout``, ``max_connections``) and the receiver options by
    their option names (``max_body_bytes = 1048576``, ``lease = 60``, ``mode = "inbox"``,
    ``backoff = "2:600"``, ``key = "module:function"``; seconds and 0-for-no-limit as on the
    flags). Then one ``[[sender]]`` table per sender: ``name``, ``path``, ``secrets_env =
    "VARIABLE"`` (comma-separated secrets, as ``RUNFLOW_CALLBACK_SECRETS``) or ``secrets = [...]``,
    ``handler``, and receiver options but :data:`SHARED_OPTIONS`.

    Every mistake is one :class:`~runflow_callbacks.errors.ConfigurationError` naming the file
    and the key: unreadable or invalid TOML, an unknown key, a wrong type, a duplicate name or
    path, and a file holding ``secrets`` that its group or others may read. The receiver
    options keep their TOML values: ``serve`` reads each as its flag (:func:`option_text`),
    which is where a value of the right type but out of range is refused, naming the key too.
    """
    file = str(path)
    try:
        with open(file, "rb") as opened:
            mode = os.fstat(opened.fileno()).st_mode
            data = tomllib.load(opened)
    except OSError as error:
        raise ConfigurationError(f"{file}: cannot read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{file}: not valid TOML: {error}") from None
    config = ServeConfig(file=file)
    tables = data.pop("sender", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError(f"{file}: sender: must be [[sender]] tables")
    for key, value in data.items():
        where = f"{file}: {key}"
        if key in SERVE_KEYS:
            config.settings[key] = Setting(_typed(value, SERVE_KEYS[key], where), where)
        elif key in OPTION_TYPES:
            config.options[key] = Setting(_option(key, value, where), where)
        else:
            _unknown(key, [*SERVE_KEYS, *OPTION_TYPES, "sender"], where)
    paths: dict[str, str] = {}
    for position, table in enumerate(tables):
        spec = _sender_table(file, position, table)
        if spec.name in config.senders:
            raise ConfigurationError(f"{spec.where}.name: two [[sender]] tables are named it")
        assert spec.path is not None
        if spec.path.value in paths:
            raise ConfigurationError(
                f"{spec.path.where}: {spec.path.value} is already sender "
                f"{paths[spec.path.value]!r}'s path"
            )
        paths[spec.path.value] = spec.name
        config.senders[spec.name] = spec
    holding = [spec.name for spec in config.senders.values() if spec.secrets is not None]
    if holding and os.name != "nt" and stat.S_IMODE(mode) & 0o077:
        raise ConfigurationError(
            f"{file}: holds secrets (sender {holding[0]!r}) but its group or others may read it "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {file}, or name a variable with "
            "secrets_env instead"
        )
    return config


def _sender_table(file: str, position: int, table: dict[str, Any]) -> SenderSpec:
    name = table.get("name")
    if name is None:
        raise ConfigurationError(f"{file}: sender[{position}].name: missing")
    where = f"{file}: sender[{position}].name"
    try:
        _check_name(_typed(name, (str,), where))
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from None
    spec = SenderSpec(name=name, where=f"{file}: sender.{name}")
    for key, value in table.items():
        where = f"{spec.where}.{key}"
        if key == "name":
            continue
        if key == "path":
            spec.path = Setting(_check_path(_typed(value, (str,), where), who=where), where)
        elif key == "secrets":
            spec.secrets = Setting(_secret_list(value, where), where)
        elif key == "secrets_env":
            spec.secrets_env = Setting(_typed(value, (str,), where), where)
        elif key == "handler":
            spec.handler = Setting(_typed(value, (str,), where), where)
        elif key in OPTION_TYPES and key not in SHARED_OPTIONS:
            spec.options[key] = Setting(_option(key, value, where), where)
        elif key in SHARED_OPTIONS:
            raise ConfigurationError(f"{where}: shared by every sender: set it at the top level")
        else:
            _unknown(key, [*SENDER_KEYS, *(set(OPTION_TYPES) - SHARED_OPTIONS)], where)
    if spec.path is None:
        raise ConfigurationError(f"{spec.where}.path: missing")
    if spec.secrets is not None and spec.secrets_env is not None:
        raise ConfigurationError(f"{spec.where}: give secrets or secrets_env, not both")
    return spec


def _typed(value: object, types: tuple[type, ...], where: str) -> Any:
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return value
    wanted = " or ".join(_TYPE_NAMES[kind] for kind in types)
    shown = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)
    raise ConfigurationError(f"{where}: must be {wanted}, not {shown}")


def _secret_list(value: object, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ConfigurationError(f"{where}: must be a string or a list of strings")
    return items


def _option(name: str, value: object, where: str) -> Any:
    """A receiver option of the file, type-checked; ``serve`` reads its value as its flag's
    (``option_text``), so that both spell every option the same way."""
    return _typed(value, OPTION_TYPES[name], where)


def option_text(value: object) -> str:
    """A receiver option's TOML value as its ``serve`` flag would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unknown(key: str, known: Iterable[str], where: str) -> None:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    raise ConfigurationError(f"{where}: unknown key{hint}")


def _load(setting: Setting) -> Handler:
    """The handler a setting names, imported; every failure names the setting's origin."""
    from runflow_callbacks.app import load_handler  # noqa: PLC0415 - app imports this module

    try:
        return load_handler(setting.value, flag=setting.where)
    except ConfigurationError as error:
        text = str(error)
        raise ConfigurationError(
            text if text.startswith(setting.where) else f"{setting.where}: {text}"
        ) from None
