"""runflow-callbacks: receive Runflow callbacks safely.

Verify ``Runflow-Signature`` over the raw bytes, parse the verified body into typed models,
and (in the submodules) receive through ASGI middleware, test with the kit in
``runflow_callbacks.testing`` and record callbacks exactly once in a store.

Every name here is imported on first use (PEP 562): ``from runflow_callbacks import verify``
loads the verifier and cryptography, not pydantic, httpx or starlette. ``_EXPORTS`` says
where each name lives; the ``TYPE_CHECKING`` block repeats it for type checkers, which do not
run ``__getattr__``. ``__version__`` is read from the installed distribution's metadata.
"""

from __future__ import annotations

import importlib

from runflow_callbacks._metadata import distribution_version as _distribution_version

TYPE_CHECKING = False  # importing typing costs a short command's start-up; checkers see True

if TYPE_CHECKING:
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
        AnyCallbackPayload,
        BatchCallbackDelivery,
        BatchCallbackPayload,
        BatchEvent,
        BatchOutput,
        BatchStatus,
        CallbackAttempt,
        CallbackDelivery,
        CallbackPayload,
        GenericCallbackPayload,
        KnownEvent,
        RunCallbackDelivery,
        RunCallbackPayload,
        RunEvent,
        RunStatus,
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

    __version__: str

__all__ = [
    "SIGNATURE_HEADER",
    "AnyCallbackPayload",
    "AsyncRunflowClient",
    "BatchCallbackDelivery",
    "BatchCallbackPayload",
    "BatchEvent",
    "BatchOutput",
    "BatchStatus",
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
    "KnownEvent",
    "MalformedSignatureError",
    "MismatchHint",
    "MissingSignatureError",
    "Outcome",
    "PayloadTooLargeError",
    "RunCallbackDelivery",
    "RunCallbackPayload",
    "RunEvent",
    "RunStatus",
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

#: Where each public name is defined: the one table to edit when a name moves to another module
#: (keep the ``TYPE_CHECKING`` imports above in step; ``tests/test_imports.py`` checks both).
_EXPORTS: dict[str, str] = {
    "CallbackContext": "runflow_callbacks.asgi",
    "CallbackMiddleware": "runflow_callbacks.asgi",
    "get_callback": "runflow_callbacks.asgi",
    "AsyncRunflowClient": "runflow_callbacks.client",
    "CallbackSecret": "runflow_callbacks.client",
    "RunflowClient": "runflow_callbacks.client",
    "MismatchHint": "runflow_callbacks.diagnose",
    "diagnose_mismatch": "runflow_callbacks.diagnose",
    "ConfigurationError": "runflow_callbacks.errors",
    "InvalidPayloadError": "runflow_callbacks.errors",
    "MalformedSignatureError": "runflow_callbacks.errors",
    "MissingSignatureError": "runflow_callbacks.errors",
    "PayloadTooLargeError": "runflow_callbacks.errors",
    "RunflowAPIError": "runflow_callbacks.errors",
    "RunflowCallbackError": "runflow_callbacks.errors",
    "SignatureMismatchError": "runflow_callbacks.errors",
    "StoreError": "runflow_callbacks.errors",
    "VerificationError": "runflow_callbacks.errors",
    "AnyCallbackPayload": "runflow_callbacks.models",
    "BatchCallbackDelivery": "runflow_callbacks.models",
    "BatchCallbackPayload": "runflow_callbacks.models",
    "BatchEvent": "runflow_callbacks.models",
    "BatchOutput": "runflow_callbacks.models",
    "BatchStatus": "runflow_callbacks.models",
    "CallbackAttempt": "runflow_callbacks.models",
    "CallbackDelivery": "runflow_callbacks.models",
    "CallbackPayload": "runflow_callbacks.models",
    "GenericCallbackPayload": "runflow_callbacks.models",
    "KnownEvent": "runflow_callbacks.models",
    "RunCallbackDelivery": "runflow_callbacks.models",
    "RunCallbackPayload": "runflow_callbacks.models",
    "RunEvent": "runflow_callbacks.models",
    "RunStatus": "runflow_callbacks.models",
    "parse_callback": "runflow_callbacks.models",
    "parse_delivery_history": "runflow_callbacks.models",
    "CallbackReceiver": "runflow_callbacks.receiver",
    "Outcome": "runflow_callbacks.receiver",
    "SIGNATURE_HEADER": "runflow_callbacks.verifier",
    "IncrementalVerifier": "runflow_callbacks.verifier",
    "Secret": "runflow_callbacks.verifier",
    "Verifier": "runflow_callbacks.verifier",
    "is_valid": "runflow_callbacks.verifier",
    "sign": "runflow_callbacks.verifier",
    "verify": "runflow_callbacks.verifier",
    "dumps_payload": "runflow_callbacks.wire",
}

if not TYPE_CHECKING:
    # Hidden from type checkers: they see the explicit imports above, so that a misspelt name
    # stays an error instead of becoming an ``object`` returned by ``__getattr__``.

    def __getattr__(name: str) -> object:
        """Import ``name`` from its module on first access, then keep it as a global."""
        if name == "__version__":
            value: object = _distribution_version()
        elif name in _EXPORTS:
            value = getattr(importlib.import_module(_EXPORTS[name]), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # later lookups find the global and skip __getattr__
        return value


def __dir__() -> list[str]:
    """The public names and the module's own globals, whether imported yet or not."""
    return sorted({*globals(), *__all__})
