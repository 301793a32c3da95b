"""The inbox in a browser: what ``runflow-callbacks inbox web`` serves.

>>> app = create_web_app("sqlite:///./runflow-callbacks.db")  # doctest: +SKIP

A few server-rendered pages (Starlette, no JavaScript) over one store:

``GET /``
    The counts per state (:meth:`~runflow_callbacks.stores.CallbackStore.stats`), then the
    callbacks, **newest first**, ``page_size`` a page, filtered by ``state``, ``event`` and
    the time they were received (``since`` ≤ received ≤ ``until``, UTC). A store with nothing
    in it says so.
``GET /callback?key=KEY``
    One callback: its key, state, attempts, deliveries, times, last error, headers and body
    (pretty-printed when it is JSON).
``POST /retry``
    Only with ``allow_retry=True``, which adds a *Retry* button to the page of a failed,
    dead, unhandled or received callback. With a ``handler``,
    :meth:`CallbackProcessor.retry() <runflow_callbacks.processing.CallbackProcessor.retry>`
    runs it now; without one, :meth:`~runflow_callbacks.stores.CallbackStore.reset_for_retry`
    makes it due again for a running ``serve --inbox`` worker. A retry must carry the
    per-process random token of the page's hidden field and come from the page's own origin
    (``Origin`` and ``Sec-Fetch-Site``, when the browser sends them): anything else is 403.

Every value that came from a request (keys, events, headers, bodies, errors) is HTML-escaped
(:func:`escape`): the pages are built from constant templates whose holes are escaped unless
they hold :class:`Html` built here. Responses carry a Content-Security-Policy that allows no
script at all, and are never cached.

With ``token`` set, every request must carry it: ``Authorization: Bearer <token>``, or
``?token=<token>`` once (the page answers with a cookie holding a value derived from the
token, and a redirect to the same page without it). Without a token, only requests whose
``Host`` is a loopback name are served (``127.0.0.1``, ``localhost``, ``[::1]``), so that a
web page elsewhere cannot read the inbox through a DNS name rebound to this machine.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import secrets
from datetime import datetime, timezone
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from runflow_callbacks._time import utc_now
from runflow_callbacks.errors import ConfigurationError, RunflowCallbackError
from runflow_callbacks.stores import STATES, UnknownCallbackError, open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from runflow_callbacks.handlers import Handler
    from runflow_callbacks.processing import CallbackProcessor
    from runflow_callbacks.stores import (
        CallbackStore,
        RejectedRequest,
        State,
        StoredCallback,
        StoreStats,
    )

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "RETRYABLE",
    "SIGN_IN_COOKIE",
    "Html",
    "check_token",
    "create_web_app",
    "escape",
    "is_loopback",
]

#: Callbacks on one page of the list.
DEFAULT_PAGE_SIZE: Final = 50
#: The states whose page offers a retry (those ``reset_for_retry`` brings back).
RETRYABLE: Final[frozenset[str]] = frozenset({"failed", "dead", "unhandled", "received"})
#: The cookie that keeps a browser signed in after ``?token=``.
SIGN_IN_COOKIE: Final = "runflow_inbox_token"
#: What a body shown on a page is cut to (the whole body stays in the store).
MAX_SHOWN_BODY: Final = 256 * 1024
#: The most rejected requests the rejected page lists (newest first).
MAX_SHOWN_REJECTED: Final = 200
#: A retry form is a key and a token: anything bigger is refused.
_MAX_FORM_BYTES: Final = 16 * 1024
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


# --- HTML ------------------------------------------------------------------------------------


class Html(str):
    """Text that is HTML already (built here from constant templates): :func:`escape` keeps it."""

    __slots__ = ()


def escape(value: object) -> Html:
    """``value`` as HTML text: ``&``, ``<``, ``>`` and both quotes escaped; None is empty.

    >>> escape("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    """
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def render(template: str, /, **values: object) -> Html:
    """``template`` (a constant) with every ``{name}`` replaced by ``escape(value)``."""
    return Html(template.format_map({name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[Html], separator: str = "") -> Html:
    """Pieces of HTML, one after the other."""
    return Html(separator.join(escape(part) for part in parts))


_CSS: Final = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: #fff; }
a { color: var(--accent); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.25rem; align-items: baseline;
         padding: .75rem 1.5rem; border-bottom: 1px solid var(--line); background: var(--soft); }
header .brand { font-weight: 600; color: inherit; text-decoration: none; font-size: 15px; }
header .meta { color: var(--muted); font-size: 12px; }
header .links a { margin-right: .75rem; }
details summary { cursor: pointer; color: var(--accent); }
main { padding: 1rem 1.5rem 2rem; max-width: 1280px; }
h1 { font-size: 18px; margin: .25rem 0 1rem; word-break: break-all; }
h2 { font-size: 15px; margin: 1.5rem 0 .5rem; }
h2 small { color: var(--muted); font-weight: normal; }
code, .mono, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.counts { display: flex; flex-wrap: wrap; gap: .5rem; margin: 0 0 1rem; }
.count { display: block; min-width: 6.5rem; padding: .45rem .75rem; border: 1px solid var(--line);
         border-radius: 6px; color: inherit; text-decoration: none; background: #fff; }
.count .n { display: block; font-size: 20px; font-weight: 600; }
.count .label { color: var(--muted); font-size: 12px; }
a.count:hover { border-color: var(--accent); }
.count.active { border-color: var(--accent); box-shadow: inset 0 0 0 1px var(--accent); }
.count.total { background: var(--soft); }
.filters { display: flex; flex-wrap: wrap; gap: .75rem; align-items: end; padding: .75rem;
           border: 1px solid var(--line); border-radius: 6px; background: var(--soft); }
.filters label { display: flex; flex-direction: column; gap: .2rem; font-size: 12px;
                 color: var(--muted); }
input, select, button { font: inherit; padding: .3rem .5rem; border: 1px solid var(--line);
                        border-radius: 6px; background: #fff; color: var(--fg); }
button { cursor: pointer; background: var(--accent); border-color: var(--accent); color: #fff; }
.summary { color: var(--muted); margin: .75rem 0 0; }
table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--soft); }
td.key, td.event, td.value { font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
                             font-size: 12px; word-break: break-all; }
td.num { text-align: right; }
.state { display: inline-block; padding: 0 .55rem; border-radius: 999px; font-size: 12px;
         font-weight: 600; background: #eaeef2; color: #424a53; }
.state-received { background: #ddf4ff; color: #0550ae; }
.state-processing { background: #fbefff; color: #6639ba; }
.state-processed { background: #dafbe1; color: #116329; }
.state-failed { background: #fff1e5; color: #953800; }
.state-dead { background: #ffebe9; color: #82071e; }
.pager { display: flex; gap: 1rem; align-items: center; margin-top: .75rem; }
.pager .off { color: var(--muted); }
.empty { padding: 2rem; text-align: center; color: var(--muted); border: 1px dashed var(--line);
         border-radius: 6px; margin-top: 1rem; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
      padding: .75rem; overflow: auto; font-size: 12px; white-space: pre-wrap;
      word-break: break-all; }
pre.error { background: #ffebe9; border-color: #ffcecb; }
dl.fields { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.25rem;
            margin: 0; }
dl.fields dt { color: var(--muted); }
dl.fields dd { margin: 0; word-break: break-all; }
.notice { padding: .5rem .75rem; border-radius: 6px; background: #ddf4ff;
          border: 1px solid #54aeff; }
.problem { padding: .5rem .75rem; border-radius: 6px; background: #ffebe9;
           border: 1px solid #ff8182; }
.retry { margin-top: 1rem; display: flex; gap: .75rem; align-items: center; }
.hint { color: var(--muted); font-size: 12px; }
""".strip()

# No script may run, and the one stylesheet is allowed by its hash (it is inline).
_CSS_HASH: Final = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
_CSP: Final = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes form posts "Origin: null"
    (b"cache-control", b"no-store"),
)

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · runflow-callbacks inbox</title>
<style>{css}</style>
</head>
<body>
<header><a class="brand" href="/">runflow-callbacks inbox</a>
<nav class="links"><a href="/">Callbacks</a> <a href="/rejected">Rejected requests</a></nav>
{meta}</header>
<main>
{content}
</main>
</body>
</html>
"""


def _when(moment: datetime | None) -> Html:
    if moment is None:
        return Html("-")
    moment = moment.astimezone(timezone.utc)
    return render(
        '<time datetime="{iso}">{shown}</time>',
        iso=moment.isoformat(),
        shown=moment.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _state(state: str) -> Html:
    return render('<span class="state state-{state}">{state}</span>', state=state)


def _detail_url(key: str, **extra: str) -> str:
    return "/callback?" + urlencode({"key": key, **extra})


def _pretty(body: bytes) -> str:
    """The body as text: indented when it is JSON, as sent (UTF-8, undecodable bytes replaced)
    otherwise."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to indent
        return body.decode("utf-8", errors="replace")


# --- filters and paging ----------------------------------------------------------------------


class _BadQueryError(ValueError):
    """A filter or page number the list cannot use (answered 400 with the message)."""


def _moment(text: str, name: str) -> datetime | None:
    """A time from a filter field: ISO 8601 (``datetime-local`` sends ``2026-05-06T10:00``);
    without an offset it is UTC, as the page shows times."""
    text = text.strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _BadQueryError(f"{name} is not a date and time (YYYY-MM-DDTHH:MM[:SS])") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class _Filters:
    """What the list shows: its query parameters, checked."""

    def __init__(self, query: Mapping[str, str]) -> None:
        state = query.get("state", "").strip()
        self.state: State | None = next((known for known in STATES if known == state), None)
        if state and self.state is None:
            raise _BadQueryError(f"state must be one of {', '.join(STATES)}")
        self.event = query.get("event", "")  # matched exactly, spaces included
        self.since_text = query.get("since", "").strip()
        self.until_text = query.get("until", "").strip()
        self.since = _moment(self.since_text, "received from")
        self.until = _moment(self.until_text, "received until")
        page = query.get("page", "1").strip() or "1"
        if not (page.isascii() and page.isdigit()) or int(page) < 1:
            raise _BadQueryError("page must be a positive number")
        self.page = int(page)

    def keep(self, record: StoredCallback) -> bool:
        """Whether ``record`` passes the event and time filters (the state one is the store's)."""
        if self.event and record.event != self.event:
            return False
        if self.since is not None and record.received_at < self.since:
            return False
        return not (self.until is not None and record.received_at > self.until)

    def query(self, **changes: object) -> str:
        """The list's URL with these filters, and ``changes`` (a page) applied."""
        values: dict[str, object] = {
            "state": self.state or "",
            "event": self.event,
            "since": self.since_text,
            "until": self.until_text,
            **changes,
        }
        kept = {name: str(value) for name, value in values.items() if value not in ("", None, 1)}
        return "/?" + urlencode(kept) if kept else "/"

    @property
    def active(self) -> bool:
        return bool(self.state or self.event or self.since_text or self.until_text)


# --- the pages -------------------------------------------------------------------------------

_COUNT: Final = (
    '<a class="count{active}" data-count="{name}" href="{href}">'
    '<span class="n">{n}</span><span class="label">{label}</span></a>'
)
_TOTAL: Final = (
    '<div class="count total" data-count="{name}" title="{title}">'
    '<span class="n">{n}</span><span class="label">{label}</span></div>'
)
_ROW: Final = (
    '<tr data-key="{key}" data-state="{state}">'
    '<td class="received">{received}</td><td class="state-cell">{badge}</td>'
    '<td class="event">{event}</td><td class="num attempts">{attempts}</td>'
    '<td class="num deliveries">{deliveries}</td><td class="source">{source}</td>'
    '<td class="key"><a href="{href}">{key}</a></td></tr>'
)
_RETRY_MESSAGES: Final[dict[str, str]] = {
    "processed": "Retried: the handler ran and the callback is processed.",
    "failed": "Retried: the handler failed again (see the last error).",
    "dead": "Not retried: the callback is dead.",
    "duplicate": "Not retried: the callback is processed already.",
    "in_progress": "Not retried: the callback is running right now.",
    "unhandled": "Retried: no handler takes its event, so it is kept as unhandled.",
    "reset": "Due again: a running 'serve --inbox' worker will run it.",
    "not_reset": "Not reset: the callback is processed already, or running right now.",
}


def _counts(stats: StoreStats, filters: _Filters) -> Html:
    # StoreStats counts the received state as "pending" (its "received" counts every callback).
    by_state = {
        state: getattr(stats, "pending" if state == "received" else state) for state in STATES
    }
    cards = [
        render(
            _COUNT,
            active=" active" if filters.state == state else "",
            name=state,
            href="/?" + urlencode({"state": state}),
            n=count,
            label=state,
        )
        for state, count in by_state.items()
    ]
    totals = (
        ("callbacks", stats.received, "distinct callbacks recorded"),
        ("duplicates", stats.duplicates, "deliveries after the first of a callback"),
        ("reconciled", stats.reconciled, "first recorded by reconcile"),
        ("rejected", stats.rejected, "refused by the receiver (bad signature, bad body...)"),
    )
    cards += [
        render(_TOTAL, name=name, n=count, label=name, title=title)
        if name != "rejected"
        else render(_COUNT, active="", name=name, href="/rejected", n=count, label=name)
        for name, count, title in totals
    ]
    return render(
        '<section class="counts" aria-label="counts">{cards}</section>', cards=join(cards)
    )


def _filter_form(filters: _Filters, events: Sequence[str]) -> Html:
    states = join(
        render(
            '<option value="{value}"{selected}>{value}</option>',
            value=state,
            selected=Html(" selected") if filters.state == state else "",
        )
        for state in STATES
    )
    suggestions = join(render('<option value="{event}">', event=event) for event in events)
    return render(
        """<form class="filters" method="get" action="/">
<label>State <select name="state"><option value="">any</option>{states}</select></label>
<label>Event <input name="event" list="events" value="{event}" placeholder="any"
 size="24"><datalist id="events">{suggestions}</datalist></label>
<label>Received from (UTC) <input type="datetime-local" step="1" name="since" value="{since}">
</label>
<label>until (UTC) <input type="datetime-local" step="1" name="until" value="{until}"></label>
<button type="submit">Filter</button> <a href="/">Clear</a>
</form>""",
        states=states,
        event=filters.event,
        suggestions=suggestions,
        since=filters.since_text,
        until=filters.until_text,
    )


class _Inbox:
    """The pages of one store."""

    def __init__(
        self,
        store: CallbackStore,
        *,
        processor: CallbackProcessor | None,
        allow_retry: bool,
        page_size: int,
        label: str | None,
        csrf_token: str,
    ) -> None:
        self.store = store
        self.processor = processor
        self.allow_retry = allow_retry
        self.page_size = page_size
        self.label = label
        self.csrf_token = csrf_token

    # -- layout --

    def page(self, title: str, content: Html, *, status: int = 200) -> HTMLResponse:
        meta = []
        if self.label:
            meta.append(render('<span class="meta store">store {label}</span>', label=self.label))
        mode = "retry allowed" if self.allow_retry else "read-only"
        meta.append(render('<span class="meta mode">{mode}</span>', mode=mode))
        body = render(_PAGE, title=title, css=Html(_CSS), meta=join(meta), content=content)
        return HTMLResponse(body, status_code=status)

    def problem(self, title: str, message: str, *, status: int) -> HTMLResponse:
        content = render(
            '<h1>{title}</h1><p class="problem" role="alert">{message}</p>'
            '<p><a href="/">Back to the inbox</a></p>',
            title=title,
            message=message,
        )
        return self.page(title, content, status=status)

    # -- GET / --

    async def list_page(self, request: Request) -> HTMLResponse:
        try:
            filters = _Filters(request.query_params)
        except _BadQueryError as error:
            return self.problem("Bad filter", str(error), status=400)
        try:
            stats = await self.store.stats()
            # The store filters by state; the event and time filters, the newest-first order
            # and the paging are done here, over the whole listing, for now. A store-side query
            # (filters, order, offset and limit in the backend) is a later step.
            records = await self.store.list_callbacks(state=filters.state)
        except RunflowCallbackError as error:
            return self.problem("Store unavailable", str(error), status=503)
        events = sorted({record.event for record in records if record.event is not None})
        matching = [record for record in reversed(records) if filters.keep(record)]
        pages = max(1, -(-len(matching) // self.page_size))
        page = min(filters.page, pages)
        shown = matching[(page - 1) * self.page_size : page * self.page_size]
        parts = [_counts(stats, filters), _filter_form(filters, events)]
        if stats.received == 0:
            parts.append(
                Html(
                    '<p class="empty" role="status">No callbacks recorded yet. Callbacks '
                    "appear here once <code>runflow-callbacks serve</code> has received "
                    "some on this store.</p>"
                )
            )
        elif not matching:
            parts.append(
                Html(
                    '<p class="empty" role="status">No callback matches these filters. '
                    '<a href="/">Show every callback</a></p>'
                )
            )
        else:
            parts.append(self._table(shown, filters, page, pages, len(matching)))
        return self.page("Callbacks", join(parts))

    def _table(
        self,
        records: Sequence[StoredCallback],
        filters: _Filters,
        page: int,
        pages: int,
        total: int,
    ) -> Html:
        rows = join(
            render(
                _ROW,
                key=record.key,
                state=record.state,
                received=_when(record.received_at),
                badge=_state(record.state),
                event=record.event or "-",
                attempts=record.attempts,
                deliveries=record.deliveries,
                source=record.source,
                href=_detail_url(record.key),
            )
            for record in records
        )
        what = "callback" if total == 1 else "callbacks"
        if filters.active:
            what += " matches" if total == 1 else " match"
        summary = render(
            '<p class="summary">{total} {what} · newest first</p>', total=total, what=what
        )
        newer = (
            render(
                '<a rel="prev" class="newer" href="{href}">← Newer</a>',
                href=filters.query(page=page - 1),
            )
            if page > 1
            else Html('<span class="off">← Newer</span>')
        )
        older = (
            render(
                '<a rel="next" class="older" href="{href}">Older →</a>',
                href=filters.query(page=page + 1),
            )
            if page < pages
            else Html('<span class="off">Older →</span>')
        )
        pager = render(
            '<nav class="pager" aria-label="pages">{newer}<span>page {page} of {pages}</span>'
            "{older}</nav>",
            newer=newer,
            older=older,
            page=page,
            pages=pages,
        )
        table = render(
            '<table class="callbacks"><thead><tr><th>Received (UTC)</th><th>State</th>'
            "<th>Event</th><th>Tries</th><th>Deliveries</th><th>Source</th><th>Key</th></tr>"
            "</thead><tbody>{rows}</tbody></table>",
            rows=rows,
        )
        return join([summary, table, pager])

    # -- GET /callback --

    async def detail_page(self, request: Request) -> HTMLResponse:
        key = request.query_params.get("key")
        if not key:
            return self.problem("No key", "name a callback: /callback?key=KEY", status=400)
        try:
            record = await self.store.get(key)
        except RunflowCallbackError as error:
            return self.problem("Store unavailable", str(error), status=503)
        if record is None:
            return self.problem(
                "Unknown callback", f"no callback is recorded under key {key!r}", status=404
            )
        message = _RETRY_MESSAGES.get(request.query_params.get("retried", ""))
        parts = [
            Html('<p><a href="/">← All callbacks</a></p>'),
            render('<h1>Callback <code class="key">{key}</code></h1>', key=record.key),
        ]
        if message is not None:
            parts.append(render('<p class="notice" role="status">{message}</p>', message=message))
        duplicates = f" ({record.duplicates} duplicate{'s' if record.duplicates != 1 else ''})"
        fields: list[tuple[str, object]] = [
            ("key", record.key),
            ("state", _state(record.state)),
            ("event", record.event or "-"),
            ("kind", record.kind),
            ("subject", record.subject_id or "-"),
            ("source", record.source),
            ("attempts", record.attempts),
            ("deliveries", f"{record.deliveries}{duplicates}"),
            ("secret", record.secret_label or "- (unsigned)"),
            ("request id", record.request_id or "-"),
            ("received", _when(record.received_at)),
            ("updated", _when(record.updated_at)),
            ("next attempt", _when(record.next_attempt_at)),
            ("lease expires", _when(record.lease_expires_at)),
            ("processed", _when(record.processed_at)),
            ("pruned", _when(record.pruned_at)),
        ]
        parts.append(
            render(
                '<dl class="fields">{items}</dl>',
                items=join(
                    render(
                        '<dt>{name}</dt><dd class="field" data-field="{name}">{value}</dd>',
                        name=name,
                        value=value,
                    )
                    for name, value in fields
                ),
            )
        )
        parts.append(self._retry_form(record))
        parts.append(Html("<h2>Last error</h2>"))
        if record.last_error:
            parts.append(
                render('<pre class="error last-error">{error}</pre>', error=record.last_error)
            )
        else:
            parts.append(Html('<p class="hint last-error">none</p>'))
        headers = join(
            render(
                '<tr><td class="value">{name}</td><td class="value">{value}</td></tr>',
                name=name,
                value=value,
            )
            for name, value in record.headers.items()
        )
        parts.append(Html("<h2>Headers</h2>"))
        parts.append(
            render(
                '<table class="headers"><thead><tr><th>Name</th><th>Value</th></tr></thead>'
                "<tbody>{rows}</tbody></table>",
                rows=headers,
            )
            if record.headers
            else Html('<p class="hint">none</p>')
        )
        body = _pretty(record.body[:MAX_SHOWN_BODY])
        cut = f" (the first {MAX_SHOWN_BODY} shown)" if len(record.body) > MAX_SHOWN_BODY else ""
        parts.append(
            render("<h2>Body <small>{size} bytes{cut}</small></h2>", size=len(record.body), cut=cut)
        )
        parts.append(render('<pre class="body">{body}</pre>', body=body))
        return self.page(f"Callback {record.key}", join(parts))

    # -- GET /rejected --

    async def rejected_page(self, _request: Request) -> HTMLResponse:
        try:
            requests = await self.store.list_rejected(limit=MAX_SHOWN_REJECTED)
        except RunflowCallbackError as error:
            return self.problem("Store unavailable", str(error), status=503)
        parts = [
            Html('<p><a href="/">← All callbacks</a></p>'),
            Html("<h1>Rejected requests</h1>"),
            Html(
                '<p class="hint">The requests the receiver refused, newest first, as kept by '
                "<code>serve --keep-rejected N</code> (credentials left out). Replay those a "
                "wrong secret refused with <code>runflow-callbacks inbox replay-rejected "
                "ID|--all</code>.</p>"
            ),
        ]
        if not requests:
            parts.append(
                Html(
                    '<p class="empty" role="status">No rejected requests kept. Start '
                    "<code>runflow-callbacks serve</code> with <code>--keep-rejected N</code> to "
                    "keep the last N.</p>"
                )
            )
            return self.page("Rejected requests", join(parts))
        rows = join(self._rejected_row(request) for request in requests)
        parts.append(
            render(
                '<table class="rejected"><thead><tr><th>Id</th><th>Received (UTC)</th>'
                "<th>Reason</th><th>Bytes</th><th>Request id</th><th>Replayed</th>"
                "<th>Request</th></tr></thead><tbody>{rows}</tbody></table>",
                rows=rows,
            )
        )
        return self.page("Rejected requests", join(parts))

    @staticmethod
    def _rejected_row(request: RejectedRequest) -> Html:
        headers = join(
            render("{name}: {value}\n", name=name, value=value)
            for name, value in request.headers.items()
        )
        cut = " (cut: not replayable)" if request.truncated else ""
        replayed = (
            render(
                '<a href="{href}">{key}</a>',
                href=_detail_url(request.replayed_key),
                key=request.replayed_key,
            )
            if request.replayed_key is not None
            else Html("no")
        )
        return render(
            '<tr data-rejected="{id}" data-reason="{reason}"><td class="num">{id}</td>'
            '<td class="received">{received}</td><td class="reason">{reason}</td>'
            '<td class="num">{size}{cut}</td><td class="value">{request_id}</td>'
            '<td class="replayed">{replayed}</td>'
            '<td><details><summary>headers and body</summary><pre class="headers">{headers}'
            '</pre><pre class="body">{body}</pre></details></td></tr>',
            id=request.id or "-",
            received=_when(request.received_at),
            reason=request.reason,
            size=request.body_bytes,
            cut=cut,
            request_id=request.headers.get("runflow-request-id", "-"),
            replayed=replayed,
            headers=headers,
            body=_pretty(request.body[:MAX_SHOWN_BODY]),
        )

    def _retry_form(self, record: StoredCallback) -> Html:
        if record.state not in RETRYABLE:
            return Html("")
        if not self.allow_retry:
            return Html(
                '<p class="hint">Read-only: start <code>inbox web</code> with '
                "<code>--allow-retry</code> to retry it from here.</p>"
            )
        what = (
            "runs the handler now"
            if self.processor is not None
            else "makes it due again for a running 'serve --inbox' worker"
        )
        return render(
            '<form class="retry" method="post" action="/retry">'
            '<input type="hidden" name="key" value="{key}">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<button type="submit" name="retry">Retry</button>'
            '<span class="hint">{what}</span></form>',
            key=record.key,
            csrf=self.csrf_token,
            what=what,
        )

    # -- POST /retry --

    async def retry(self, request: Request) -> Response:
        if not self.allow_retry:
            return self.problem(
                "Read-only", "this inbox is read-only (start it with --allow-retry)", status=403
            )
        refusal = _cross_site(request)
        if refusal is not None:
            return self.problem("Refused", refusal, status=403)
        form = await _form(request)
        if form is None:
            return self.problem("Bad request", "a retry is a small urlencoded form", status=400)
        given = form.get("csrf", "")
        if not hmac.compare_digest(given.encode(), self.csrf_token.encode()):
            return self.problem(
                "Refused", "this form is not from this page (reload it and try again)", status=403
            )
        key = form.get("key", "")
        if not key:
            return self.problem("Bad request", "name the callback to retry", status=400)
        outcome: str
        try:
            if self.processor is not None:
                outcome = (await self.processor.retry(key)).status
            else:
                reset = await self.store.reset_for_retry(key, now=utc_now())
                outcome = "reset" if reset else "not_reset"
        except UnknownCallbackError:
            return self.problem(
                "Unknown callback", f"no callback is recorded under key {key!r}", status=404
            )
        except RunflowCallbackError as error:
            return self.problem("Store unavailable", str(error), status=503)
        return RedirectResponse(_detail_url(key, retried=outcome), status_code=303)


def _cross_site(request: Request) -> str | None:
    """Why a POST looks like it came from another site (None when it does not).

    Browsers send ``Sec-Fetch-Site`` (and ``Origin``) with every form POST; a client that
    sends neither (curl) is judged by the form's token alone.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return "a retry must come from this inbox's own pages (Sec-Fetch-Site)"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return "a retry must come from this inbox's own pages (Origin)"
    return None


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of ``request`` (first value of each field), or None when it is not
    one or is too big. Parsed here: Starlette's form parser needs python-multipart."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > _MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(
            data.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=8
        )
    except ValueError:  # not ASCII, bad UTF-8 in an escape, or too many fields
        return None
    return {name: values[0] for name, values in fields.items()}


# --- access: the token and the Host ----------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets, no port) is this
    machine only: ``localhost``, ``127.0.0.0/8``, ``::1``."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name of a ``Host`` header, without its port."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token (never the token itself)."""
    return hmac.new(token.encode(), b"runflow-callbacks inbox web", hashlib.sha256).hexdigest()


def check_token(token: str) -> str:
    """A web token must be 16 or more printable characters without spaces.

    The message never repeats the token.
    """
    if len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigurationError(
            "the web token must be at least 16 printable characters, without spaces"
        )
    if not token.isascii():
        raise ConfigurationError("the web token must be ASCII")
    return token


class _Guard:
    """Every response gets the security headers; a request is served only with the token (when
    one is set), or only under a loopback ``Host`` (when none is)."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token
        self.cookie = None if token is None else _cookie_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
        else:
            await refusal(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None:
            if is_loopback(_host_name(request.headers.get("host", ""))):
                return None
            return _plain(403, "this inbox answers only under a loopback host name")
        expected = self.token.encode()
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), expected
        ):
            return None
        assert self.cookie is not None
        cookie = _cookie(request.headers.get("cookie", ""), SIGN_IN_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie.encode()):
            return None
        given = request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), expected):
            response = _plain(
                401,
                "this inbox needs its token: open it once with ?token=..., or send "
                "Authorization: Bearer ...",
            )
            response.headers["www-authenticate"] = 'Bearer realm="runflow-callbacks inbox"'
            return response
        if request.method not in {"GET", "HEAD"}:
            return None  # accepted for this request; only a page load is redirected
        # Signed in: drop the token from the address (history, bookmarks) and keep a cookie.
        rest = [(name, value) for name, value in request.query_params.multi_items()]
        kept = urlencode([(name, value) for name, value in rest if name != "token"])
        target = request.url.path + (f"?{kept}" if kept else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SIGN_IN_COOKIE,
            self.cookie,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response


def _cookie(header: str, name: str) -> str | None:
    jar = SimpleCookie()
    with contextlib.suppress(CookieError):  # a malformed Cookie header is no cookie
        jar.load(header)
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain")


# --- the application -------------------------------------------------------------------------


def create_web_app(
    store: CallbackStore | str,
    *,
    handler: Handler | None = None,
    allow_retry: bool = False,
    token: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    label: str | None = None,
    csrf_token: str | None = None,
) -> Starlette:
    """The inbox pages over ``store`` (a store, or a URL opened with ``create=False``).

    ``allow_retry`` adds the retry button and ``POST /retry``; ``handler`` (only with
    ``allow_retry``) runs a retried callback at once through a
    :class:`~runflow_callbacks.processing.CallbackProcessor`. ``token`` makes every request
    need it (see the module docstring). ``label`` is shown in the header (a store URL: pass it
    through :func:`~runflow_callbacks.stores.mask_url`). ``csrf_token`` is random per
    application unless given. The store is closed when the application shuts down.
    """
    if handler is not None and not allow_retry:
        raise ConfigurationError("a handler runs retries: it needs allow_retry=True")
    if isinstance(page_size, bool) or page_size < 1:
        raise ConfigurationError(f"page_size must be a positive int, not {page_size!r}")
    if token is not None:
        check_token(token)
    opened = open_store(store, create=False) if isinstance(store, str) else store
    processor: CallbackProcessor | None = None
    if handler is not None:
        from runflow_callbacks.processing import CallbackProcessor  # noqa: PLC0415 - pydantic

        processor = CallbackProcessor(opened, handler)
    inbox = _Inbox(
        opened,
        processor=processor,
        allow_retry=allow_retry,
        page_size=page_size,
        label=label,
        csrf_token=csrf_token or secrets.token_urlsafe(32),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await opened.close()

    app = Starlette(
        routes=[
            Route("/", inbox.list_page, methods=["GET"]),
            Route("/callback", inbox.detail_page, methods=["GET"]),
            Route("/retry", inbox.retry, methods=["POST"]),
            Route("/rejected", inbox.rejected_page, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, token=token)
    app.state.store = opened
    return app
