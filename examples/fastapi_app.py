"""A FastAPI app that receives Runflow callbacks on ``POST /callbacks/runflow``.

Run it with the secrets Runflow gave you (comma-separated during a rotation)::

    RUNFLOW_CALLBACK_SECRETS=whsec_... uvicorn examples.fastapi_app:app

The route gets the verified callback from a dependency; forged, oversize and malformed requests
are answered 401, 413 and 400 before the route runs.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, FastAPI

from runflow_callbacks import CallbackContext, Verifier
from runflow_callbacks.fastapi import CallbackDependency

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("examples.fastapi_app")

runflow = CallbackDependency(secrets=Verifier.from_env("RUNFLOW_CALLBACK_SECRETS"))

app = FastAPI(title="Runflow callback receiver")


@app.post("/callbacks/runflow")
async def receive_callback(
    context: Annotated[CallbackContext, Depends(runflow)],
) -> dict[str, str]:
    """Log what arrived; a real app would copy what it needs (output URLs expire)."""
    logger.info(
        "received %s for %s (signed with %s)",
        context.event,
        context.subject_id,
        context.secret_label,
    )
    return {"status": "processed"}
