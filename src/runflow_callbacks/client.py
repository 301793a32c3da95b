"""A small Runflow API client: callback delivery history, redelivery, callback secrets, webhooks.

>>> with RunflowClient(api_key="rf_...") as client:  # doctest: +SKIP
...     for delivery in client.batch_deliveries("0190f2a4-0000-7000-8000-000000000002"):
...         print(delivery.status_code, [a.status_code for a in delivery.attempts or []])

:class:`RunflowClient` (sync) and :class:`AsyncRunflowClient` share everything but the I/O.
Errors raise :class:`~runflow_callbacks.errors.RunflowAPIError` with ``status``, ``code``,
``message`` and ``errors``; ``status`` is 0 when no HTTP answer came at all. Retries use
exponential backoff and jitter (at most ``max_attempts``, default 5); ``Retry-After`` (seconds)
is honoured up to ``backoff_max_s``. What is retried depends on whether replaying the request
is harmless:

* reads (``GET``) and the secret update (``PATCH``, which only sets values) are retried on 5xx,
  429 and network errors, never on other 4xx;
* ``POST`` (create a callback secret, ask for a redelivery) creates something each time it is
  applied, and Runflow documents no ``Idempotency-Key``; so it is retried only when it certainly
  was not sent (``httpx.ConnectError``, ``httpx.ConnectTimeout``, ``httpx.PoolTimeout``) or when
  Runflow says to (429 or 503 carrying ``Retry-After``). When its answer is lost (read/write
  timeout, dropped connection) it is never sent again: the error says it may have been applied
  and how to check (list the secrets, look at the delivery history).

Lists (webhooks, their deliveries and attempts: spec section 9) are read to the end: the
client follows ``next`` (a URL on the API's own host, absolute or relative) or ``next_pq``
(sent back as ``?pq=``) until a page has neither, and raises
:class:`~runflow_callbacks.errors.InvalidPayloadError` for a page that leads to another host
(which would receive the API key) or back to one already read.

Every request carries ``User-Agent: runflow-callbacks/<version> (python <x.y>; httpx <version>)``.
The API is ``base_url=``, else ``$RUNFLOW_API_URL``, else :data:`DEFAULT_BASE_URL`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar
from urllib.parse import urlencode
from uuid import UUID

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, SecretStr, ValidationError

from runflow_callbacks._metadata import DISTRIBUTION, distribution_version
from runflow_callbacks.defaults import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL
from runflow_callbacks.errors import ConfigurationError, InvalidPayloadError, RunflowAPIError
from runflow_callbacks.models import (
    BatchCallbackDelivery,
    RunCallbackDelivery,
    parse_delivery_history,
)
from runflow_callbacks.webhooks import Page, Webhook, WebhookAttempt, WebhookDelivery

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from types import TracebackType

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncRunflowClient",
    "CallbackSecret",
    "RunflowClient",
]

#: The Runflow API (from :mod:`runflow_callbacks.defaults`, where every default is kept).
DEFAULT_BASE_URL: Final = DEFAULT_API_URL
_RETRYABLE: Final = frozenset({429, 500, 502, 503, 504})
#: Answers that ask for the same request again later: retried even when replaying is not safe,
#: but only when they carry ``Retry-After`` (the server saying it did not take the request).
_RETRY_LATER: Final = frozenset({429, 503})
#: Failures that happen before a single byte of the request left: nothing can have been applied.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SyncSelf = TypeVar("_SyncSelf", bound="RunflowClient")
_AsyncSelf = TypeVar("_AsyncSelf", bound="AsyncRunflowClient")
_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)
_I = TypeVar("_I", bound=BaseModel)
_Kind = Literal["batch", "run"]
_PLURAL: Final[dict[_Kind, str]] = {"batch": "batches", "run": "runs"}


class CallbackSecret(BaseModel):
    """A callback secret (spec section 6). ``plain_secret`` is set only in the create answer.

    Its value never shows in ``repr()``; read it with ``secret.plain_secret.get_secret_value()``.
    """

    model_config = ConfigDict(extra="allow")

    id: UUID | None = None
    org_id: UUID | None = None
    key_prefix: str | None = None
    is_current: bool | None = None
    label: str | None = None
    disabled_at: AwareDatetime | None = None
    last_used_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    plain_secret: SecretStr | None = None


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One API call: what to send, how to read a successful answer, and whether to replay it.

    ``replay_risk`` is None when sending the request twice is harmless (reads, updates that
    only set values). Otherwise it says what a request whose answer was lost may have done and
    how to check, and the request is sent again only when it certainly was not sent or Runflow
    asked for it (see :meth:`_ClientBase._retry_after`).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], _T]
    content: bytes | None = None
    replay_risk: str | None = None

    def __post_init__(self) -> None:
        if self.method == "POST" and self.replay_risk is None:  # pragma: no cover - a bug
            raise AssertionError("a POST must say what replaying it risks (replay_risk=)")


def _plain_id(what: str, value: str | UUID) -> str:
    text = str(value).strip()
    if not text or any(char in text for char in "/?#% "):
        raise ConfigurationError(f"{what} id must be a plain id, got {str(value)!r}")
    return text


def _subject_path(kind: _Kind, subject_id: str | UUID, suffix: str) -> str:
    return f"/v1/{_PLURAL[kind]}/{_plain_id(kind, subject_id)}/{suffix}"


def _model_parser(model: type[_M], what: str) -> Callable[[httpx.Response], _M]:
    def parse(response: httpx.Response) -> _M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidPayloadError(
                f"the Runflow API answered an unexpected {what} ({exc.error_count()} errors)"
            ) from None

    return parse


def _history_parser(kind: _Kind) -> Callable[[httpx.Response], list[Any]]:
    def parse(response: httpx.Response) -> list[Any]:
        return list(parse_delivery_history(response.content, kind=kind))

    return parse


def _raw_records(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        records = response.json()
    except ValueError:
        records = None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InvalidPayloadError("the delivery history is not a JSON array of records")
    return records


_parse_batch_delivery = _model_parser(BatchCallbackDelivery, "delivery record")
_parse_run_delivery = _model_parser(RunCallbackDelivery, "delivery record")
_parse_secret = _model_parser(CallbackSecret, "callback secret")
_parse_webhook = _model_parser(Webhook, "webhook")
_parse_webhook_delivery = _model_parser(WebhookDelivery, "webhook delivery")
_parse_webhook_attempt = _model_parser(WebhookAttempt, "webhook attempt")
#: The page sizes the API takes (``limit``, spec section 9).
_PAGE_LIMITS: Final = range(1, 501)


def _page_parser(item: type[_I], what: str) -> Callable[[httpx.Response], Page[_I]]:
    model: type[Page[_I]] = Page[item]  # type: ignore[valid-type] # parametrized at run time

    def parse(response: httpx.Response) -> Page[_I]:
        content = response.content
        if content.lstrip()[:1] == b"[":  # a bare array: one page, nothing after it
            content = b'{"items": ' + content + b"}"
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            raise InvalidPayloadError(
                f"the Runflow API answered an unexpected page of {what} "
                f"({exc.error_count()} errors)"
            ) from None

    return parse


_parse_webhook_page = _page_parser(Webhook, "webhooks")
_parse_webhook_delivery_page = _page_parser(WebhookDelivery, "webhook deliveries")
_parse_webhook_attempt_page = _page_parser(WebhookAttempt, "webhook attempts")


def _query(path: str, **params: str | int | None) -> str:
    given = {name: value for name, value in params.items() if value is not None}
    return f"{path}?{urlencode(given)}" if given else path


def _embed(embed: Iterable[str]) -> str | None:
    names = [name.strip() for name in ([embed] if isinstance(embed, str) else embed)]
    if any(not name or "," in name for name in names):
        raise ConfigurationError("embed= takes names like 'event_subscriptions', one per item")
    return ",".join(names) or None


def _page_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit not in _PAGE_LIMITS:
        raise ConfigurationError(f"limit must be an int from 1 to 500 (a page size), not {limit!r}")
    return limit


def _webhook_path(webhook_id: str | UUID, *rest: str | UUID) -> str:
    path = f"/v1/webhooks/{_plain_id('webhook', webhook_id)}"
    names = ("deliveries", "attempts")
    for position, part in enumerate(rest):
        what = "webhook delivery" if position == 0 else "webhook attempt"
        path += f"/{names[position]}/{_plain_id(what, part)}"
    return path


class _Pages(Generic[_I]):
    """Reads a list to its end, one page per :meth:`advance`, for either client.

    ``call`` is the next request (None once a page had no ``next`` nor ``next_pq``); ``items``
    what the pages held so far, kept when ``keep`` says so.
    """

    def __init__(
        self,
        first: _Call[Page[_I]],
        base_url: str,
        *,
        keep: Callable[[_I], bool] | None = None,
    ) -> None:
        self.call: _Call[Page[_I]] | None = first
        self.items: list[_I] = []
        self._first = first
        self._base = httpx.URL(base_url)
        self._keep = keep
        self._first_url = httpx.URL(base_url.rstrip("/") + first.path)
        self._current = self._first_url
        self._seen = {str(self._current)}

    def advance(self, page: Page[_I]) -> None:
        """Take ``page``'s items and find the request for the next page, if any."""
        items = page.items or []
        self.items.extend(item for item in items if self._keep is None or self._keep(item))
        self.call = None
        if page.next_pq is not None and page.next_pq != "":
            url = self._first_url.copy_merge_params({"pq": str(page.next_pq)})
        elif page.next:
            url = self._current.join(page.next)
            if (url.scheme, url.host, url.port) != (
                self._base.scheme,
                self._base.host,
                self._base.port,
            ):
                raise InvalidPayloadError(
                    "the Runflow API's next page is on another host; it was not followed "
                    "(the request would carry the API key there)"
                )
        else:
            return
        if str(url) in self._seen:
            raise InvalidPayloadError(
                "the Runflow API's pages loop: the next page is one already read"
            )
        self._seen.add(str(url))
        self._current = url
        self.call = _Call("GET", str(url), self._first.parse)


def _created_since(since: object) -> Callable[[WebhookDelivery], bool] | None:
    if since is None:
        return None
    if not isinstance(since, datetime) or since.utcoffset() is None:
        raise ConfigurationError("since= must be a timezone-aware datetime")

    def keep(delivery: WebhookDelivery) -> bool:
        # A delivery without a creation time is kept: reading one too many costs nothing.
        return delivery.created_at is None or delivery.created_at >= since

    return keep


class _Calls:
    """Every API call the clients make, described once for both of them."""

    @staticmethod
    def batch_deliveries(batch_id: str | UUID) -> _Call[list[BatchCallbackDelivery]]:
        path = _subject_path("batch", batch_id, "callback")
        return _Call("GET", path, _history_parser("batch"))

    @staticmethod
    def run_deliveries(run_id: str | UUID) -> _Call[list[RunCallbackDelivery]]:
        return _Call("GET", _subject_path("run", run_id, "callback"), _history_parser("run"))

    @staticmethod
    def history_json(
        batch_id: str | UUID | None, run_id: str | UUID | None
    ) -> _Call[list[dict[str, Any]]]:
        if batch_id is not None and run_id is None:
            return _Call("GET", _subject_path("batch", batch_id, "callback"), _raw_records)
        if run_id is not None and batch_id is None:
            return _Call("GET", _subject_path("run", run_id, "callback"), _raw_records)
        raise ConfigurationError("pass exactly one of batch_id= or run_id=")

    @staticmethod
    def redeliver_batch(batch_id: str | UUID) -> _Call[BatchCallbackDelivery]:
        path = _subject_path("batch", batch_id, "callback-redeliveries")
        risk = _redelivery_risk("batch", batch_id, "batch_deliveries")
        return _Call("POST", path, _parse_batch_delivery, replay_risk=risk)

    @staticmethod
    def redeliver_run(run_id: str | UUID) -> _Call[RunCallbackDelivery]:
        path = _subject_path("run", run_id, "callback-redeliveries")
        risk = _redelivery_risk("run", run_id, "run_deliveries")
        return _Call("POST", path, _parse_run_delivery, replay_risk=risk)

    @staticmethod
    def create_secret(label: str | None) -> _Call[CallbackSecret]:
        body = json.dumps({"label": label} if label is not None else {}).encode()
        named = f" labelled {label!r}" if label is not None else ""
        risk = (
            f"a callback secret{named} may have been created, and its value (returned only in "
            "that answer) is lost: list the callback secrets and delete the one you cannot "
            "use before creating another"
        )
        return _Call("POST", "/v1/callback-secrets", _parse_secret, body, replay_risk=risk)

    @staticmethod
    def get_secret(secret_id: str | UUID) -> _Call[CallbackSecret]:
        path = f"/v1/callback-secrets/{_plain_id('callback secret', secret_id)}"
        return _Call("GET", path, _parse_secret)

    @staticmethod
    def update_secret(
        secret_id: str | UUID, label: str | None, is_current: bool | None
    ) -> _Call[CallbackSecret]:
        body: dict[str, Any] = {}
        if label is not None:
            body["label"] = label
        if is_current is not None:
            body["is_current"] = is_current
        if not body:
            raise ConfigurationError("update_callback_secret needs label= or is_current=")
        path = f"/v1/callback-secrets/{_plain_id('callback secret', secret_id)}"
        return _Call("PATCH", path, _parse_secret, json.dumps(body).encode())

    @staticmethod
    def webhooks(embed: Iterable[str]) -> _Call[Page[Webhook]]:
        path = _query("/v1/webhooks", embed=_embed(embed))
        return _Call("GET", path, _parse_webhook_page)

    @staticmethod
    def webhook(webhook_id: str | UUID, embed: Iterable[str]) -> _Call[Webhook]:
        path = _query(_webhook_path(webhook_id), embed=_embed(embed))
        return _Call("GET", path, _parse_webhook)

    @staticmethod
    def webhook_deliveries(
        webhook_id: str | UUID, limit: int | None
    ) -> _Call[Page[WebhookDelivery]]:
        path = _query(_webhook_path(webhook_id) + "/deliveries", limit=_page_limit(limit))
        return _Call("GET", path, _parse_webhook_delivery_page)

    @staticmethod
    def webhook_delivery(webhook_id: str | UUID, delivery_id: str | UUID) -> _Call[WebhookDelivery]:
        return _Call("GET", _webhook_path(webhook_id, delivery_id), _parse_webhook_delivery)

    @staticmethod
    def webhook_attempts(
        webhook_id: str | UUID, delivery_id: str | UUID, limit: int | None
    ) -> _Call[Page[WebhookAttempt]]:
        path = _webhook_path(webhook_id, delivery_id) + "/attempts"
        return _Call("GET", _query(path, limit=_page_limit(limit)), _parse_webhook_attempt_page)

    @staticmethod
    def webhook_attempt(
        webhook_id: str | UUID, delivery_id: str | UUID, attempt_id: str | UUID
    ) -> _Call[WebhookAttempt]:
        path = _webhook_path(webhook_id, delivery_id, attempt_id)
        return _Call("GET", path, _parse_webhook_attempt)


def _redelivery_risk(kind: _Kind, subject_id: str | UUID, method: str) -> str:
    subject = f"{kind} {_plain_id(kind, subject_id)}"
    return (
        f"a redelivery may have been started: look at the delivery history of {subject} "
        f"({method}()) before asking for another"
    )


@functools.cache
def _user_agent() -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{DISTRIBUTION}/{distribution_version()} (python {python}; httpx {httpx.__version__})"


def _api_error(response: httpx.Response) -> RunflowAPIError:
    code = message = errors = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
        errors = body.get("errors")
    return RunflowAPIError(status=response.status_code, code=code, message=message, errors=errors)


def _network_error(exc: httpx.TransportError, replay_risk: str | None = None) -> RunflowAPIError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "network_error"
    message = f"no answer from the Runflow API ({type(exc).__name__})"
    if replay_risk is not None:
        message += f"; the request was sent and may have been applied: {replay_risk}"
    return RunflowAPIError(status=0, code=code, message=message)


class _ClientBase:
    """Configuration, backoff and the retry decision shared by both clients."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        organization_id: str | None,
        timeout_s: float,
        connect_timeout_s: float,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        rng: random.Random | None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key or not key.strip():
            raise ConfigurationError(
                f"a Runflow API key is required: pass api_key= or set {API_KEY_ENV}"
            )
        if base_url is None:
            base_url = os.environ.get(API_URL_ENV) or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("base_url must start with http:// or https://")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigurationError("timeouts must be positive")
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self._headers = {
            "Authorization": f"Bearer {key.strip()}",
            "Accept": "application/json",
            "User-Agent": _user_agent(),
        }
        if organization_id:
            self._headers["X-Organization-Id"] = organization_id
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def backoff_s(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, jittered.

        The delay is ``min(backoff_max_s, backoff_base_s * 2**(attempt-1))`` scaled by a random
        factor in [0.5, 1); a numeric ``Retry-After`` overrides it (capped the same way).
        """
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + self._rng.random() / 2)

    @staticmethod
    def _request_options(call: _Call[Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if call.content is not None else None
        return {
            "method": call.method,
            "url": call.path,
            "content": call.content,
            "headers": headers,
        }

    def _retry_after(
        self, call: _Call[Any], attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> float | None:
        """None when ``outcome`` is the answer; else the delay before the next attempt.

        Raises :class:`RunflowAPIError` for an error that must not (or can no longer) be retried.
        A call that is harmless to replay is retried on network errors and on 5xx and 429
        answers. Any other is retried only when it certainly was not sent (it never connected)
        or when Runflow asked for it again (429 or 503 with ``Retry-After``); when it was sent
        and its answer lost, the error says what it may have done.
        """
        last = attempt >= self.max_attempts
        safe = call.replay_risk is None
        if isinstance(outcome, httpx.TransportError):
            if not safe and not isinstance(outcome, _NOT_SENT):
                raise _network_error(outcome, call.replay_risk) from None
            if last:
                raise _network_error(outcome) from None
            return self.backoff_s(attempt)
        if outcome.is_success:
            return None
        if safe:
            retry = outcome.status_code in _RETRYABLE
        else:
            retry = outcome.status_code in _RETRY_LATER and "retry-after" in outcome.headers
        if retry and not last:
            return self.backoff_s(attempt, outcome)
        raise _api_error(outcome)


class RunflowClient(_ClientBase):
    """Synchronous Runflow API client (httpx).

    ``api_key`` defaults to ``$RUNFLOW_API_KEY`` and ``base_url`` to ``$RUNFLOW_API_URL``, else
    :data:`DEFAULT_BASE_URL`; ``organization_id`` is sent as ``X-Organization-Id``.
    ``timeout_s`` bounds each read/write/pool wait and ``connect_timeout_s`` each connect.
    ``sleep`` and ``rng`` make the backoff testable; ``transport`` replaces httpx's transport.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization_id: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            organization_id=organization_id,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            rng=rng,
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    def __enter__(self: _SyncSelf) -> _SyncSelf:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, call: _Call[_T]) -> _T:
        for attempt in range(1, self.max_attempts + 1):
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(**self._request_options(call))
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._retry_after(call, attempt, outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return call.parse(outcome)
            self._sleep(delay)
        raise AssertionError("unreachable: the last attempt answers or raises")  # pragma: no cover

    def batch_deliveries(self, batch_id: str | UUID) -> list[BatchCallbackDelivery]:
        """The callback deliveries of a batch, attempts included."""
        return self._call(_Calls.batch_deliveries(batch_id))

    def run_deliveries(self, run_id: str | UUID) -> list[RunCallbackDelivery]:
        """The callback deliveries of a run, attempts included."""
        return self._call(_Calls.run_deliveries(run_id))

    def delivery_history_json(
        self, *, batch_id: str | UUID | None = None, run_id: str | UUID | None = None
    ) -> list[dict[str, Any]]:
        """The delivery records of one batch or run exactly as the API answered them."""
        return self._call(_Calls.history_json(batch_id, run_id))

    def redeliver_batch(self, batch_id: str | UUID) -> BatchCallbackDelivery:
        """Ask Runflow to deliver a batch's callback again; returns the new delivery."""
        return self._call(_Calls.redeliver_batch(batch_id))

    def redeliver_run(self, run_id: str | UUID) -> RunCallbackDelivery:
        """Ask Runflow to deliver a run's callback again (payload rebuilt from the run)."""
        return self._call(_Calls.redeliver_run(run_id))

    def create_callback_secret(self, *, label: str | None = None) -> CallbackSecret:
        """Create a callback secret; the answer is the only one carrying ``plain_secret``."""
        return self._call(_Calls.create_secret(label))

    def get_callback_secret(self, secret_id: str | UUID) -> CallbackSecret:
        """A callback secret's record (without its value)."""
        return self._call(_Calls.get_secret(secret_id))

    def update_callback_secret(
        self, secret_id: str | UUID, *, label: str | None = None, is_current: bool | None = None
    ) -> CallbackSecret:
        """Rename a callback secret or promote it to current (``is_current=True``)."""
        return self._call(_Calls.update_secret(secret_id, label, is_current))

    def _all(self, first: _Call[Page[_I]], *, keep: Callable[[_I], bool] | None = None) -> list[_I]:
        pages = _Pages(first, self.base_url, keep=keep)
        while pages.call is not None:
            pages.advance(self._call(pages.call))
        return pages.items

    def list_webhooks(self, *, embed: Iterable[str] = ()) -> list[Webhook]:
        """Every webhook of the organization (all pages); ``embed`` as the API takes it
        (``"event_subscriptions"``, ``"deliveries"``)."""
        return self._all(_Calls.webhooks(embed))

    def get_webhook(self, webhook_id: str | UUID, *, embed: Iterable[str] = ()) -> Webhook:
        """One webhook."""
        return self._call(_Calls.webhook(webhook_id, embed))

    def list_webhook_deliveries(
        self,
        webhook_id: str | UUID,
        *,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[WebhookDelivery]:
        """The deliveries of one webhook, or of all of them for ``webhook_id="any"``.

        Every page is read (``limit`` is the page size, 1 to 500). ``since`` (timezone-aware)
        keeps the deliveries created at or after it, and those whose creation time is unknown;
        the API documents no time filter, so it is applied here.
        """
        return self._all(_Calls.webhook_deliveries(webhook_id, limit), keep=_created_since(since))

    def get_webhook_delivery(
        self, delivery_id: str | UUID, *, webhook_id: str | UUID = "any"
    ) -> WebhookDelivery:
        """One webhook delivery (under ``webhook_id``, by default ``any``)."""
        return self._call(_Calls.webhook_delivery(webhook_id, delivery_id))

    def list_webhook_attempts(
        self,
        delivery_id: str | UUID,
        *,
        webhook_id: str | UUID = "any",
        limit: int | None = None,
    ) -> list[WebhookAttempt]:
        """Every attempt of one webhook delivery (all pages; ``limit`` is the page size)."""
        return self._all(_Calls.webhook_attempts(webhook_id, delivery_id, limit))

    def get_webhook_attempt(
        self,
        delivery_id: str | UUID,
        attempt_id: str | UUID,
        *,
        webhook_id: str | UUID = "any",
    ) -> WebhookAttempt:
        """One attempt of a webhook delivery."""
        return self._call(_Calls.webhook_attempt(webhook_id, delivery_id, attempt_id))


class AsyncRunflowClient(_ClientBase):
    """Asynchronous twin of :class:`RunflowClient`, with the same options and methods."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization_id: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            organization_id=organization_id,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            rng=rng,
        )
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    async def __aenter__(self: _AsyncSelf) -> _AsyncSelf:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, call: _Call[_T]) -> _T:
        for attempt in range(1, self.max_attempts + 1):
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(**self._request_options(call))
            except httpx.TransportError as exc:
                outcome = exc
            delay = self._retry_after(call, attempt, outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return call.parse(outcome)
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt answers or raises")  # pragma: no cover

    async def batch_deliveries(self, batch_id: str | UUID) -> list[BatchCallbackDelivery]:
        """The callback deliveries of a batch, attempts included."""
        return await self._call(_Calls.batch_deliveries(batch_id))

    async def run_deliveries(self, run_id: str | UUID) -> list[RunCallbackDelivery]:
        """The callback deliveries of a run, attempts included."""
        return await self._call(_Calls.run_deliveries(run_id))

    async def delivery_history_json(
        self, *, batch_id: str | UUID | None = None, run_id: str | UUID | None = None
    ) -> list[dict[str, Any]]:
        """The delivery records of one batch or run exactly as the API answered them."""
        return await self._call(_Calls.history_json(batch_id, run_id))

    async def redeliver_batch(self, batch_id: str | UUID) -> BatchCallbackDelivery:
        """Ask Runflow to deliver a batch's callback again; returns the new delivery."""
        return await self._call(_Calls.redeliver_batch(batch_id))

    async def redeliver_run(self, run_id: str | UUID) -> RunCallbackDelivery:
        """Ask Runflow to deliver a run's callback again (payload rebuilt from the run)."""
        return await self._call(_Calls.redeliver_run(run_id))

    async def create_callback_secret(self, *, label: str | None = None) -> CallbackSecret:
        """Create a callback secret; the answer is the only one carrying ``plain_secret``."""
        return await self._call(_Calls.create_secret(label))

    async def get_callback_secret(self, secret_id: str | UUID) -> CallbackSecret:
        """A callback secret's record (without its value)."""
        return await self._call(_Calls.get_secret(secret_id))

    async def update_callback_secret(
        self, secret_id: str | UUID, *, label: str | None = None, is_current: bool | None = None
    ) -> CallbackSecret:
        """Rename a callback secret or promote it to current (``is_current=True``)."""
        return await self._call(_Calls.update_secret(secret_id, label, is_current))

    async def _all(
        self, first: _Call[Page[_I]], *, keep: Callable[[_I], bool] | None = None
    ) -> list[_I]:
        pages = _Pages(first, self.base_url, keep=keep)
        while pages.call is not None:
            pages.advance(await self._call(pages.call))
        return pages.items

    async def list_webhooks(self, *, embed: Iterable[str] = ()) -> list[Webhook]:
        """Every webhook of the organization (all pages); ``embed`` as the API takes it
        (``"event_subscriptions"``, ``"deliveries"``)."""
        return await self._all(_Calls.webhooks(embed))

    async def get_webhook(self, webhook_id: str | UUID, *, embed: Iterable[str] = ()) -> Webhook:
        """One webhook."""
        return await self._call(_Calls.webhook(webhook_id, embed))

    async def list_webhook_deliveries(
        self,
        webhook_id: str | UUID,
        *,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[WebhookDelivery]:
        """The deliveries of one webhook, or of all of them for ``webhook_id="any"``.

        Every page is read (``limit`` is the page size, 1 to 500). ``since`` (timezone-aware)
        keeps the deliveries created at or after it, and those whose creation time is unknown;
        the API documents no time filter, so it is applied here.
        """
        first = _Calls.webhook_deliveries(webhook_id, limit)
        return await self._all(first, keep=_created_since(since))

    async def get_webhook_delivery(
        self, delivery_id: str | UUID, *, webhook_id: str | UUID = "any"
    ) -> WebhookDelivery:
        """One webhook delivery (under ``webhook_id``, by default ``any``)."""
        return await self._call(_Calls.webhook_delivery(webhook_id, delivery_id))

    async def list_webhook_attempts(
        self,
        delivery_id: str | UUID,
        *,
        webhook_id: str | UUID = "any",
        limit: int | None = None,
    ) -> list[WebhookAttempt]:
        """Every attempt of one webhook delivery (all pages; ``limit`` is the page size)."""
        return await self._all(_Calls.webhook_attempts(webhook_id, delivery_id, limit))

    async def get_webhook_attempt(
        self,
        delivery_id: str | UUID,
        attempt_id: str | UUID,
        *,
        webhook_id: str | UUID = "any",
    ) -> WebhookAttempt:
        """One attempt of a webhook delivery."""
        return await self._call(_Calls.webhook_attempt(webhook_id, delivery_id, attempt_id))
