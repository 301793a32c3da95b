"""runflow-callbacks: receive Runflow callbacks safely.

Verify ``Runflow-Signature`` over the raw bytes, parse the verified body into typed models,
and (in the submodules) receive through ASGI middleware, test with the kit in
``runflow_callbacks.testing`` and record callbacks exactly once in a store.
"""

from __future__ import annotations

from runflow_callbacks.asgi import CallbackContext, CallbackMiddleware, get_callback
from runflow_callbacks.client import AsyncRunflowClient, CallbackSecret, RunflowClient
from runflow_callbacks.diagnose import MismatchHint, diagnose_mismatch
from runflow_callbacks.errors import (
    ConfigurationError,
    InvalidPayloadError,
    MalformedSignatureError,
    MissingSignatureError,
    PayloadTooLargeError,
    RunflowAPIError,
    RunflowCallbackError,
    SignatureMismatchError,
    StoreError,
    VerificationError,
)
from runflow_callbacks.models import (
    BatchCallbackDelivery,
    BatchCallbackPayload,
    BatchOutput,
    CallbackAttempt,
    CallbackDelivery,
    CallbackPayload,
    GenericCallbackPayload,
    RunCallbackDelivery,
    RunCallbackPayload,
    parse_callback,
    parse_delivery_history,
)
from runflow_callbacks.receiver import CallbackReceiver, Outcome
from runflow_callbacks.verifier import (
    SIGNATURE_HEADER,
    IncrementalVerifier,
    Secret,
    Verifier,
    is_valid,
    sign,
    verify,
)
from runflow_callbacks.wire import dumps_payload

__version__ = "0.1.0"

__all__ = [
    "SIGNATURE_HEADER",
    "AsyncRunflowClient",
    "BatchCallbackDelivery",
    "BatchCallbackPayload",
    "BatchOutput",
    "CallbackAttempt",
    "CallbackContext",
    "CallbackDelivery",
    "CallbackMiddleware",
    "CallbackPayload",
    "CallbackReceiver",
    "CallbackSecret",
    "ConfigurationError",
    "GenericCallbackPayload",
    "IncrementalVerifier",
    "InvalidPayloadError",
    "MalformedSignatureError",
    "MismatchHint",
    "MissingSignatureError",
    "Outcome",
    "PayloadTooLargeError",
    "RunCallbackDelivery",
    "RunCallbackPayload",
    "RunflowAPIError",
    "RunflowCallbackError",
    "RunflowClient",
    "Secret",
    "SignatureMismatchError",
    "StoreError",
    "VerificationError",
    "Verifier",
    "__version__",
    "diagnose_mismatch",
    "dumps_payload",
    "get_callback",
    "is_valid",
    "parse_callback",
    "parse_delivery_history",
    "sign",
    "verify",
]
