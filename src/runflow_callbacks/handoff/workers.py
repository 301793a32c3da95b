"""Ready worker apps for ``runflow-callbacks serve --hand-off``, configured by the environment.

``serve --hand-off celery|procrastinate --handler app:handle`` records each callback and queues
its job; the handler runs in your queue engine's workers. Start them on the same settings::

    export RUNFLOW_CALLBACK_STORE=postgresql://app@db/app  # the receiver's store
    export RUNFLOW_CALLBACK_HANDLER=app:handle            # what the workers run
    export RUNFLOW_CALLBACK_BROKER=redis://broker:6379/0  # Celery only
    celery -A runflow_callbacks.handoff.workers:celery_app worker
    procrastinate --app=runflow_callbacks.handoff.workers.procrastinate_app worker

Each attribute is built on first access (PEP 562), so importing this module for one engine
never needs the other. Your own worker module can do the same with
:func:`runflow_callbacks.handoff.celery.make_task` or
:func:`runflow_callbacks.handoff.procrastinate.make_task`.
"""

from __future__ import annotations

import os
from typing import Any, Final

from runflow_callbacks.defaults import DEFAULT_NAMESPACE, ENV_PREFIX, NAMESPACE_ENV, STORE_ENV
from runflow_callbacks.errors import ConfigurationError

__all__ = ["BROKER_ENV", "HANDLER_ENV", "settings"]

#: The Celery broker URL of ``serve --hand-off celery`` and of its workers.
BROKER_ENV: Final = ENV_PREFIX + "BROKER"
#: The handler the workers run (``module:function``).
HANDLER_ENV: Final = ENV_PREFIX + "HANDLER"


def settings(*names: str) -> dict[str, str]:
    """The environment variables ``names``, each required (a missing one is one clear line)."""
    found: dict[str, str] = {}
    for name in names:
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigurationError(f"the hand-off workers need ${name}")
        found[name] = value
    return found


def _namespace() -> str:
    return os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_NAMESPACE


def _celery_app() -> Any:
    import celery  # noqa: PLC0415 - the celery extra, for this engine only

    from runflow_callbacks.handoff.celery import make_task  # noqa: PLC0415

    given = settings(BROKER_ENV, STORE_ENV, HANDLER_ENV)
    app = celery.Celery("runflow-callbacks", broker=given[BROKER_ENV])
    make_task(app, store=given[STORE_ENV], handlers=given[HANDLER_ENV], namespace=_namespace())
    return app


def _procrastinate_app() -> Any:
    import procrastinate  # noqa: PLC0415 - the procrastinate extra, for this engine only

    from runflow_callbacks.handoff.procrastinate import make_task  # noqa: PLC0415

    given = settings(STORE_ENV, HANDLER_ENV)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=given[STORE_ENV]))
    make_task(app, store=given[STORE_ENV], handlers=given[HANDLER_ENV], namespace=_namespace())
    return app


_BUILDERS: Final = {"celery_app": _celery_app, "procrastinate_app": _procrastinate_app}


def __getattr__(name: str) -> Any:
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = builder()
    globals()[name] = value
    return value
