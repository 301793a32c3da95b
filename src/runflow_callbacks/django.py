"""Django integration: a view decorator that verifies the callback before the view runs.

Needs the ``django`` extra (``pip install 'runflow-callbacks[django]'``); the rest of the
package never imports Django.

::

    from django.http import JsonResponse
    from runflow_callbacks.django import callback_view, get_callback

    @callback_view(secrets=["whsec_..."])
    def runflow_callback(request):
        context = get_callback(request)  # also request.runflow_callback
        return JsonResponse({"received": context.event})

    @callback_view(secrets=["whsec_..."])
    async def runflow_callback_async(request):  # async views too
        return JsonResponse({"received": get_callback(request).event})

The decorator answers any method but POST with 405 (``Allow: POST``), verifies
``request.body`` with the shared :class:`~runflow_callbacks.reader.CallbackReader` (a
``Content-Length`` over ``max_body_bytes`` is 413 before the body is read), and answers a
rejection with the same status and JSON body as every other front door
(:mod:`runflow_callbacks.answers`). The view is exempt from Django's CSRF check: the
signature is what authenticates Runflow, which sends no CSRF token.

Under ASGI, :class:`~runflow_callbacks.asgi.CallbackMiddleware` can wrap Django's ASGI
application instead (``CallbackMiddleware(get_asgi_application(), secrets=...)``): it verifies
the body as it streams in, and :func:`get_callback` finds its context on the request. A
decorated view behind either middleware reuses their context rather than verifying again.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast

try:
    from asgiref.sync import iscoroutinefunction
    from django.conf import settings
    from django.core.exceptions import RequestDataTooBig
    from django.http import HttpResponse
    from django.http.request import RawPostDataException
except ImportError:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "runflow_callbacks.django needs Django: pip install 'runflow-callbacks[django]'"
    ) from None

from runflow_callbacks.context import CallbackContext, existing_callback
from runflow_callbacks.errors import (
    ClientDisconnectedError,
    InvalidPayloadError,
    PayloadTooLargeError,
)
from runflow_callbacks.wsgi import Answer, EnvironFrontDoor, environ_callback

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.http import HttpRequest
    from typing_extensions import Unpack

    from runflow_callbacks.options import ReaderArgs, ReceiverOptions
    from runflow_callbacks.reader import CallbackReader
    from runflow_callbacks.verifier import SecretsInput, Verifier

__all__ = ["REQUEST_ATTRIBUTE", "CallbackView", "callback_view", "get_callback"]

#: The attribute of the request that holds its verified :class:`CallbackContext`.
REQUEST_ATTRIBUTE: Final = "runflow_callback"

View = TypeVar("View", bound="Callable[..., Any]")


class CallbackView(EnvironFrontDoor):
    """A decorator of Django views, sync or async, that receive Runflow callbacks; build it
    with :func:`callback_view`, or subclass it to override :meth:`rejected`.

    One instance may decorate several views; they share its budget of unverified bytes.
    Each callback is logged under ``runflow_callbacks.django``.
    """

    __slots__ = ()
    logger: ClassVar[logging.Logger] = logging.getLogger("runflow_callbacks.django")

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        options: ReceiverOptions | None = None,
        **changes: Unpack[ReaderArgs],
    ) -> None:
        super().__init__(secrets=secrets, options=options, changes=changes, who="callback_view")

    def __call__(self, view: View) -> View:
        """``view``, run only for a verified callback (at ``request.runflow_callback``)."""
        wrapper: Any
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def verified_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                refusal = self.check(request)
                if refusal is not None:
                    return refusal
                return await view(request, *args, **kwargs)

            wrapper = verified_async
        else:

            @functools.wraps(view)
            def verified(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                refusal = self.check(request)
                if refusal is not None:
                    return refusal
                return view(request, *args, **kwargs)

            wrapper = verified
        # What django.views.decorators.csrf.csrf_exempt sets (which wraps async views in a
        # sync function before Django 5.0).
        wrapper.csrf_exempt = True
        return cast("View", wrapper)

    def check(self, request: HttpRequest) -> HttpResponse | None:
        """Verify the callback of ``request``: None once ``request.runflow_callback`` holds its
        context, else the answer to send (405, 400, 401, 408, 413 or 503)."""
        context = _known(request)
        if context is None:
            outcome = self.accept(request.META, lambda reader: _read_body(request, reader))
            if isinstance(outcome, Answer):
                return _response(outcome)
            context = outcome
        setattr(request, REQUEST_ATTRIBUTE, context)
        return None

    def __repr__(self) -> str:
        return (
            f"CallbackView(secrets={self.verifier!r}, max_body_bytes={self.max_body_bytes}, "
            f"allow_unsigned={self.allow_unsigned})"
        )


def callback_view(
    *,
    secrets: SecretsInput | Verifier,
    options: ReceiverOptions | None = None,
    **changes: Unpack[ReaderArgs],
) -> CallbackView:
    """A decorator for Django views that receive Runflow callbacks.

    ``secrets`` as for :class:`~runflow_callbacks.wsgi.CallbackWSGIMiddleware`; options: the
    reader options of :class:`~runflow_callbacks.options.ReceiverOptions`
    (``max_body_bytes``, ``allow_unsigned``, ``body_timeout``, ``max_unverified_bytes``,
    ``clock``), as keywords or ``options=``. Django's own ``DATA_UPLOAD_MAX_MEMORY_SIZE``
    applies too (a larger body is 413 as well).
    """
    return CallbackView(secrets=secrets, options=options, **changes)


def get_callback(request: HttpRequest) -> CallbackContext:
    """The verified :class:`~runflow_callbacks.context.CallbackContext` of ``request``: put
    there by :func:`callback_view`, :class:`~runflow_callbacks.wsgi.CallbackWSGIMiddleware`
    (under WSGI) or :class:`~runflow_callbacks.asgi.CallbackMiddleware` (under ASGI).

    Raises ``LookupError`` when none of them verified this request.
    """
    context = getattr(request, REQUEST_ATTRIBUTE, None)
    if isinstance(context, CallbackContext):
        return context
    context = _known(request)
    if context is None:
        raise LookupError(
            "no verified Runflow callback on this request: is the view decorated with "
            "callback_view, or the app wrapped in a callback middleware for this path?"
        )
    return context


def _known(request: HttpRequest) -> CallbackContext | None:
    """The context a middleware in front of Django stored (WSGI environ or ASGI scope)."""
    context = environ_callback(request.META)
    scope = getattr(request, "scope", None)  # ASGIRequest only
    if context is None and isinstance(scope, dict):
        context = existing_callback(scope)
    return context


def _read_body(request: HttpRequest, reader: CallbackReader) -> None:
    try:
        body: bytes = request.body
    except RequestDataTooBig:
        raise PayloadTooLargeError(limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE) from None
    except RawPostDataException:
        raise InvalidPayloadError(
            "the request body was read as a form before the callback view ran"
        ) from None
    except OSError:  # UnreadablePostError, or the server's own when the client left
        raise ClientDisconnectedError from None
    declared = request.META.get("CONTENT_LENGTH")
    if declared and len(body) < int(declared):  # Django reads what arrived: the client left
        raise ClientDisconnectedError
    reader.feed(body)


def _response(answer: Answer) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status, content_type="application/json")
    for name, value in answer.headers:
        response[name] = value
    if answer.quiet:
        # Nobody reads it: keep Django from logging a "Bad Request" warning for it.
        response._has_been_logged = True  # the flag django.utils.log.log_response reads
    return response
