"""A Starlette app that receives Runflow callbacks on ``POST /callbacks/runflow``.

Run it with the secrets Runflow gave you (comma-separated during a rotation)::

    RUNFLOW_CALLBACK_SECRETS=whsec_... uvicorn examples.starlette_app:app

Every verified callback is logged and answered 200; forged, oversize and malformed requests get
401, 413 and 400 before any handler runs.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.routing import Route

from runflow_callbacks import CallbackContext, CallbackReceiver, Verifier

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("examples.starlette_app")

receiver = CallbackReceiver(secrets=Verifier.from_env("RUNFLOW_CALLBACK_SECRETS"))


@receiver.on_any
async def log_callback(context: CallbackContext) -> None:
    """Log what arrived; a real app would copy what it needs (output URLs expire)."""
    logger.info(
        "received %s for %s (signed with %s)",
        context.event,
        context.subject_id,
        context.secret_label,
    )


app = Starlette(routes=[Route("/callbacks/runflow", receiver)])
