"""Flask integration: an extension that verifies callbacks before Flask routes them.

Needs the ``flask`` extra (``pip install 'runflow-callbacks[flask]'``); the rest of the
package never imports Flask.

::

    from flask import Flask
    from runflow_callbacks.flask import RunflowCallbacks, get_callback

    app = Flask(__name__)
    RunflowCallbacks(app, secrets=["whsec_..."])

    @app.post("/callbacks/runflow")
    def runflow_callback() -> dict[str, str]:
        context = get_callback()  # the verified, typed callback of this request
        return {"received": context.event or "?"}

:class:`RunflowCallbacks` installs :class:`~runflow_callbacks.wsgi.CallbackWSGIMiddleware` on
``app.wsgi_app``: the same options, checks and answers (405, 413, 401, 400 from the one table
of :mod:`runflow_callbacks.answers`), decided before Flask routes the request, so a view on
the callback path only ever runs for a verified callback; ``request.get_data()`` still
returns the exact bytes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Final

try:
    import flask
except ImportError:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "runflow_callbacks.flask needs Flask: pip install 'runflow-callbacks[flask]'"
    ) from None

from runflow_callbacks.defaults import DEFAULT_CALLBACK_PATH
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.wsgi import (
    CallbackWSGIMiddleware,
    EnvironFrontDoor,
    callback_paths,
    environ_callback,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import WSGIApplication
    from typing_extensions import Unpack

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError
    from runflow_callbacks.options import ReaderArgs, ReceiverOptions
    from runflow_callbacks.verifier import SecretsInput, Verifier

__all__ = ["EXTENSION_KEY", "RunflowCallbacks", "get_callback"]

#: Key of the extension in ``app.extensions``.
EXTENSION_KEY: Final = "runflow_callbacks"


class RunflowCallbacks(EnvironFrontDoor):
    """The Flask extension: ``RunflowCallbacks(app, secrets=...)``, or
    ``RunflowCallbacks(secrets=...)`` then ``init_app(app)`` (application factories).

    ``secrets``, ``path`` and the reader options (``max_body_bytes``, ``allow_unsigned``,
    ``body_timeout``, ``max_unverified_bytes``, ``clock``, as keywords or ``options=``) are
    those of :class:`~runflow_callbacks.wsgi.CallbackWSGIMiddleware`; the apps of one
    extension share its budget of unverified bytes. Override :meth:`rejected` to count
    rejections. Each callback is logged under ``runflow_callbacks.flask``.
    """

    __slots__ = ("paths",)
    logger: ClassVar[logging.Logger] = logging.getLogger("runflow_callbacks.flask")

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        secrets: SecretsInput | Verifier,
        path: str | Iterable[str] = DEFAULT_CALLBACK_PATH,
        options: ReceiverOptions | None = None,
        **changes: Unpack[ReaderArgs],
    ) -> None:
        super().__init__(secrets=secrets, options=options, changes=changes, who="RunflowCallbacks")
        self.paths = callback_paths(path, who="RunflowCallbacks")
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Verify callbacks on ``app``: wrap its ``wsgi_app`` in the middleware."""
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("RunflowCallbacks is already installed on this app")
        # Flask's documented way to add WSGI middleware, which mypy sees as replacing a method.
        app.wsgi_app = _FlaskMiddleware(app.wsgi_app, self)  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self

    def __repr__(self) -> str:
        return (
            f"RunflowCallbacks(paths={sorted(self.paths)!r}, secrets={self.verifier!r}, "
            f"max_body_bytes={self.max_body_bytes}, allow_unsigned={self.allow_unsigned})"
        )


class _FlaskMiddleware(CallbackWSGIMiddleware):
    """The middleware of one app: the extension's settings, budget and :meth:`rejected`."""

    __slots__ = ("extension",)
    logger = RunflowCallbacks.logger

    def __init__(self, app: WSGIApplication, extension: RunflowCallbacks) -> None:
        super().__init__(
            app, secrets=extension.verifier, path=extension.paths, options=extension.options
        )
        self.budget = extension.budget
        self.extension = extension

    def rejected(self, error: RunflowCallbackError) -> None:
        self.extension.rejected(error)


def get_callback() -> CallbackContext:
    """The verified :class:`~runflow_callbacks.context.CallbackContext` of the current request.

    Raises ``LookupError`` when the request did not go through :class:`RunflowCallbacks`
    (another path, or the extension is not installed).
    """
    context = environ_callback(flask.request.environ)
    if context is None:
        raise LookupError(
            "no verified Runflow callback on this request: is RunflowCallbacks installed "
            "for this path?"
        )
    return context
