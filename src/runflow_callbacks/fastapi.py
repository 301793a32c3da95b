"""FastAPI integration: a dependency that yields the verified callback of a route.

Needs the ``fastapi`` extra (``pip install 'runflow-callbacks[fastapi]'``); the rest of the
package never imports FastAPI.

::

    from fastapi import Depends, FastAPI
    from runflow_callbacks import BatchCallbackPayload, CallbackContext
    from runflow_callbacks.fastapi import CallbackDependency

    app = FastAPI()
    runflow = CallbackDependency(secrets=["whsec_..."])

    @app.post("/callbacks/runflow")
    async def batch_done(
        payload: BatchCallbackPayload = Depends(runflow.payload(BatchCallbackPayload)),
    ) -> dict[str, str]:
        return {"status": "processed"}

    @app.post("/callbacks/runflow/raw")
    async def anything(context: CallbackContext = Depends(runflow)) -> dict[str, str]:
        return {"status": "processed"}

Rejections are answered from the one table of :mod:`runflow_callbacks.answers` (401, 405,
413, 400), as FastAPI ``HTTPException`` answers, whose body keeps FastAPI's nesting:
``{"detail": {"error": code, "detail": text}}``. A payload of another type than the one asked
for (a run callback on a batch route) is 400 ``unexpected_payload``. When the app also runs
:class:`~runflow_callbacks.asgi.CallbackMiddleware`, the dependency reuses its context.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, TypeVar

try:
    from fastapi import HTTPException, Request
except ImportError:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "runflow_callbacks.fastapi needs FastAPI: pip install 'runflow-callbacks[fastapi]'"
    ) from None
from starlette.requests import ClientDisconnect

from runflow_callbacks._log import log_outcome, log_rejection
from runflow_callbacks.answers import METHOD_NOT_ALLOWED, rejection
from runflow_callbacks.context import STATE_KEY, CallbackContext, existing_callback
from runflow_callbacks.errors import ConfigurationError, RunflowCallbackError
from runflow_callbacks.models import CallbackPayload
from runflow_callbacks.options import READER_OPTIONS, ReaderView, resolve
from runflow_callbacks.reader import CallbackReader, UnverifiedBudget, within
from runflow_callbacks.verifier import Verifier

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from typing_extensions import Unpack

    from runflow_callbacks.options import ReaderArgs, ReceiverOptions
    from runflow_callbacks.verifier import SecretsInput

__all__ = ["CallbackDependency"]

P = TypeVar("P", bound=CallbackPayload)

logger = logging.getLogger("runflow_callbacks.fastapi")


class CallbackDependency(ReaderView):
    """A FastAPI dependency: ``Depends(dependency)`` gives the route the verified
    :class:`~runflow_callbacks.context.CallbackContext`; ``Depends(dependency.payload(Model))``
    gives the typed payload.

    ``secrets`` as for :class:`~runflow_callbacks.asgi.CallbackMiddleware`; options: the reader
    options of :class:`~runflow_callbacks.options.ReceiverOptions` (``max_body_bytes``,
    ``allow_unsigned``, ``clock``), as keywords or ``options=``. After the dependency ran,
    ``await request.body()`` in the route still returns the exact bytes.
    """

    __slots__ = ("budget", "options", "verifier")

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        options: ReceiverOptions | None = None,
        **changes: Unpack[ReaderArgs],
    ) -> None:
        self.verifier = secrets if isinstance(secrets, Verifier) else Verifier(secrets)
        self.options = resolve(options, changes, allowed=READER_OPTIONS, who="CallbackDependency")
        self.budget = UnverifiedBudget.of(self.options.max_unverified_bytes)

    async def rejected(self, error: RunflowCallbackError) -> None:
        """Called once for each request answered 400, 401 or 413; override to count them."""

    async def __call__(self, request: Request) -> CallbackContext:
        """Read, verify and parse the request's callback, or raise the right ``HTTPException``."""
        known = existing_callback(request.scope)
        if known is not None:
            return known
        if request.method != "POST":
            raise HTTPException(405, detail=METHOD_NOT_ALLOWED, headers={"Allow": "POST"})
        started = time.perf_counter()
        reader: CallbackReader | None = None
        try:
            reader = CallbackReader(
                request.scope["headers"],
                verifier=self.verifier,
                options=self.options,
                budget=self.budget,
            )
            timeout = self.options.body_timeout
            reading = _read(request, reader)
            if timeout is None:
                await reading
            else:
                await within(timeout.total_seconds(), reading)
            context = reader.finish()
        except ClientDisconnect:
            # Nobody is left to read this answer; it only ends the request without a 500.
            raise HTTPException(
                400, detail={"error": "client_disconnected", "detail": "client left"}
            ) from None
        except RunflowCallbackError as error:
            status, content = rejection(error)
            request_id = request.headers.get("runflow-request-id")
            log_rejection(logger, error, status, request_id, started)
            await self.rejected(error)
            raise HTTPException(status, detail=content) from None
        finally:
            if reader is not None:
                reader.release()
        request.scope.setdefault("state", {})[STATE_KEY] = context
        # Starlette caches the body here; with it, request.body() works in the route (the
        # stream was consumed above). Pinned by tests/test_fastapi.py.
        request._body = context.body
        log_outcome(logger, context, "verified", started)
        return context

    def payload(self, model: type[P]) -> Callable[[Request], Awaitable[P]]:
        """A dependency that yields the payload as ``model`` (400 when it is another kind)."""
        if not _is_payload_model(model):
            raise ConfigurationError(
                f"payload() takes a CallbackPayload model such as BatchCallbackPayload, "
                f"not {model!r}"
            )

        async def verified_payload(request: Request) -> P:
            context = await self(request)
            payload = context.payload
            if not isinstance(payload, model):
                raise HTTPException(
                    400,
                    detail={
                        "error": "unexpected_payload",
                        "detail": f"this route takes a {model.__name__}, "
                        f"got a {type(payload).__name__} (event {payload.event!r})",
                    },
                )
            return payload

        verified_payload.__name__ = f"runflow_{model.__name__}"
        return verified_payload


async def _read(request: Request, reader: CallbackReader) -> bool:
    async for chunk in request.stream():
        reader.feed(chunk)
    return True


def _is_payload_model(model: object) -> bool:
    return isinstance(model, type) and issubclass(model, CallbackPayload)
