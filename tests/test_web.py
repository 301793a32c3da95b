"""``runflow-callbacks inbox web``: the inbox pages, driven in a real headless Chromium.

Each test fills a SQLite store through real receivers (signed callbacks posted to a
:class:`~runflow_callbacks.receiver.CallbackReceiver`, whose handlers succeed, fail or give up),
serves the pages with uvicorn (in a thread, or as the CLI in a subprocess) and looks at them
with Selenium. The browser is Debian's ``chromium`` and ``chromium-driver``: without them the
browser tests are skipped locally, and fail when ``CI`` is true (as ``tests/conftest.py`` does
for Redis and PostgreSQL). ``RUNFLOW_TEST_WEB_SCREENSHOT=docs/inbox-web.png`` saves the list
page's picture for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.cli import main
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory, free_port, serve_in_thread, serve_process
from runflow_callbacks.web import SIGN_IN_COOKIE, create_web_app, escape, is_loopback
from runflow_callbacks.wire import dumps_payload
from servers import unavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

    from runflow_callbacks.asgi import CallbackContext
    from runflow_callbacks.stores import StoredCallback

SECRET = "whsec_web_pages_0123456789abcdef"
TOKEN = "inbox-web-token-0123456789abcdef"
NOW = datetime(2026, 5, 6, 10, 0, tzinfo=timezone.utc)
XSS_EVENT = "<script>alert(1)</script>"
XSS_HEADER = "<img src=x onerror=alert(3)>"
WAIT = 30  # seconds a WebDriverWait may wait for a page: a bound, never an assertion
CHROME_OPTIONS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,860",
)


# --- a store with callbacks in every state, made by real receivers ----------------------------


class Clock:
    """The receivers' clock: each callback is received one minute after the previous one."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Filled:
    url: str
    #: Keys by name (``processed-1``, ``failed-1``, ``dead``, ``xss``...).
    keys: dict[str, str] = field(default_factory=dict)
    #: Every key, in the order the callbacks were received.
    order: list[str] = field(default_factory=list)

    def newest_first(self) -> list[str]:
        return self.order[::-1]


def _xss_body() -> bytes:
    return (
        b'{"event": "<script>alert(1)</script>", '
        b'"batch_id": "0190f2a4-0000-7000-8000-0000000000aa", "status": "succeeded", '
        b'"metadata": {"note": "<img src=x onerror=alert(2)>"}}'
    )


async def _fill(url: str) -> Filled:
    clock = Clock()
    store = open_store(url)
    synchronous = CallbackReceiver(secrets=SECRET, store=store, clock=clock)
    once = CallbackReceiver(secrets=SECRET, store=store, clock=clock, max_tries=1)
    inbox = CallbackReceiver(secrets=SECRET, store=store, clock=clock, mode="inbox")

    @synchronous.on("batch.succeeded")
    def copy_outputs(_context: CallbackContext) -> None:
        return None

    @synchronous.on("batch.failed")
    def notify(_context: CallbackContext) -> None:
        raise RuntimeError("the warehouse API answered 503")

    @once.on("run.failed")
    def give_up(_context: CallbackContext) -> None:
        raise ValueError("the run's output is gone")

    factory = PayloadFactory(seed=7, clock=clock)
    plan: list[tuple[str, CallbackReceiver, bytes]] = [
        ("processed-1", synchronous, dumps_payload(factory.batch("batch.succeeded"))),
        ("failed-1", synchronous, dumps_payload(factory.batch("batch.failed"))),
        ("processed-2", synchronous, dumps_payload(factory.batch("batch.succeeded"))),
        ("unhandled", synchronous, dumps_payload(factory.run("run.cancelled"))),
        ("dead", once, dumps_payload(factory.run("run.failed"))),
        ("processed-3", synchronous, dumps_payload(factory.batch("batch.succeeded"))),
        ("failed-2", synchronous, dumps_payload(factory.batch("batch.failed"))),
        ("received", inbox, dumps_payload(factory.run("run.completed"))),
        ("xss", synchronous, _xss_body()),
        ("processed-4", synchronous, dumps_payload(factory.batch("batch.succeeded"))),
    ]
    filled = Filled(url)
    for minute, (name, receiver, body) in enumerate(plan):
        clock.now = NOW + timedelta(minutes=minute)
        headers = {
            "Runflow-Signature": sign(body, SECRET),
            "Content-Type": "application/json",
            "Runflow-Request-Id": f"req_{name}",
        }
        if name == "xss":
            headers["User-Agent"] = XSS_HEADER  # a header the receiver keeps
        transport = httpx.ASGITransport(app=receiver)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            await client.post("/callbacks/runflow", content=body, headers=headers)
            if name == "processed-1":  # Runflow delivered this one twice
                await client.post("/callbacks/runflow", content=body, headers=headers)
    records = await store.list_callbacks()
    await store.close()
    filled.order = [record.key for record in records]
    for (name, _receiver, _body), record in zip(plan, records, strict=True):
        filled.keys[name] = record.key
    return filled


def _record(url: str, key: str) -> StoredCallback:
    async def read() -> StoredCallback:
        async with open_store(url, create=False) as store:
            record = await store.get(key)
        assert record is not None
        return record

    return asyncio.run(read())


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    return asyncio.run(_fill(f"sqlite:///{tmp_path / 'inbox.db'}"))


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start the pages over a store URL (uvicorn in a thread); returns their base URL."""
    with contextlib.ExitStack() as stack:

        def start(url: str, **options: Any) -> str:
            app = create_web_app(open_store(url, create=False), **options)
            return stack.enter_context(serve_in_thread(app))

        yield start


# --- the browser -----------------------------------------------------------------------------


def _unavailable(why: str) -> NoReturn:
    unavailable("headless Chromium", why)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Debian's Chromium, headless, with a fresh profile, driven by its chromedriver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install 'runflow-callbacks[dev]')")
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _unavailable("install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (*CHROME_OPTIONS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which would download one) is never run.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _by_css() -> str:
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR


def _one(driver: WebDriver, selector: str) -> WebElement:
    return driver.find_element(_by_css(), selector)


def _all(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(_by_css(), selector)


def _submit(driver: WebDriver, element: WebElement) -> None:
    """Click ``element`` and wait until the next page has replaced this one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element("tag name", "html")
    element.click()
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(page))


def _rows(driver: WebDriver) -> list[tuple[str, str, str]]:
    """(key, state, event) of each row of the list, top to bottom."""
    return [
        (
            row.get_attribute("data-key") or "",
            row.get_attribute("data-state") or "",
            row.find_element(_by_css(), "td.event").text,
        )
        for row in _all(driver, "table.callbacks tbody tr")
    ]


def _count(driver: WebDriver, name: str) -> int:
    return int(_one(driver, f'[data-count="{name}"] .n').text)


def _field(driver: WebDriver, name: str) -> str:
    return _one(driver, f'dd[data-field="{name}"]').text


def _detail_url(base: str, key: str) -> str:
    return f"{base}/callback?" + str(httpx.QueryParams({"key": key}))


# --- the list --------------------------------------------------------------------------------


def test_the_list_page_shows_the_counts_per_state_and_every_callback_newest_first(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    base = serve(filled.url, label="sqlite:///inbox.db")
    browser.get(base + "/")
    counts = {
        name: _count(browser, name)
        for name in ("received", "processing", "processed", "failed", "dead", "unhandled")
    }
    assert counts == {
        "received": 1,
        "processing": 0,
        "processed": 4,
        "failed": 2,
        "dead": 1,
        "unhandled": 2,
    }
    assert (_count(browser, "callbacks"), _count(browser, "duplicates")) == (10, 1)
    assert [key for key, _state, _event in _rows(browser)] == filled.newest_first()
    assert "10 callbacks · newest first" in _one(browser, ".summary").text
    assert "read-only" in _one(browser, "header").text
    screenshot = os.environ.get("RUNFLOW_TEST_WEB_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(screenshot)


def test_filtering_by_state_then_by_event_shows_only_the_matching_rows(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(serve(filled.url) + "/")
    Select(_one(browser, "select[name=state]")).select_by_value("failed")
    _submit(browser, _one(browser, ".filters button"))
    rows = _rows(browser)
    assert [key for key, _state, _event in rows] == [
        filled.keys["failed-2"],
        filled.keys["failed-1"],
    ]
    assert {state for _key, state, _event in rows} == {"failed"}
    assert "active" in (_one(browser, '[data-count="failed"]').get_attribute("class") or "")

    Select(_one(browser, "select[name=state]")).select_by_value("")
    _one(browser, "input[name=event]").send_keys("batch.succeeded")
    _submit(browser, _one(browser, ".filters button"))
    rows = _rows(browser)
    assert [key for key, _state, _event in rows] == [
        filled.keys[f"processed-{n}"] for n in (4, 3, 2, 1)
    ]
    assert {event for _key, _state, event in rows} == {"batch.succeeded"}
    assert "4 callbacks match" in _one(browser, ".summary").text

    _one(browser, "input[name=event]").clear()
    _one(browser, "input[name=event]").send_keys("batch.exploded")
    _submit(browser, _one(browser, ".filters button"))
    assert _rows(browser) == []
    assert "No callback matches these filters" in _one(browser, ".empty").text


def test_filtering_by_the_time_received_keeps_only_the_callbacks_in_that_window(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    browser.get(serve(filled.url) + "/")
    for name, moment in (("since", "2026-05-06T10:02:00"), ("until", "2026-05-06T10:05:00")):
        browser.execute_script(
            "arguments[0].value = arguments[1]", _one(browser, f"input[name={name}]"), moment
        )
    _submit(browser, _one(browser, ".filters button"))
    assert [key for key, _state, _event in _rows(browser)] == filled.order[2:6][::-1]
    assert "since=2026-05-06T10%3A02" in browser.current_url
    # The chosen window stays in the form (Chromium drops the ":00" seconds).
    assert _one(browser, "input[name=since]").get_attribute("value") == "2026-05-06T10:02"


def test_paging_walks_through_every_callback_once_newest_first_and_back(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    browser.get(serve(filled.url, page_size=4) + "/")
    seen: list[str] = []
    pages: list[str] = []
    while True:
        seen += [key for key, _state, _event in _rows(browser)]
        pages.append(_one(browser, ".pager span:not(.off)").text)
        older = _all(browser, "a.older")
        if not older:
            break
        _submit(browser, older[0])
    assert seen == filled.newest_first()
    assert pages == ["page 1 of 3", "page 2 of 3", "page 3 of 3"]
    _submit(browser, _one(browser, "a.newer"))
    assert [key for key, _state, _event in _rows(browser)] == filled.newest_first()[4:8]


def test_an_empty_store_says_that_nothing_was_recorded_yet(
    browser: WebDriver, tmp_path: Path, serve: Callable[..., str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    async def create() -> None:
        async with open_store(url) as store:
            await store.ready()

    asyncio.run(create())
    browser.get(serve(url) + "/")
    assert "No callbacks recorded yet" in _one(browser, ".empty").text
    assert _all(browser, "table.callbacks") == []
    assert _count(browser, "callbacks") == 0


# --- one callback ----------------------------------------------------------------------------


def test_a_callback_page_shows_its_headers_pretty_body_attempts_and_last_error(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    key = filled.keys["failed-1"]
    browser.get(serve(filled.url) + "/")
    _submit(browser, _one(browser, f'tr[data-key="{key}"] td.key a'))
    assert _one(browser, "h1 code").text == key
    assert (_field(browser, "state"), _field(browser, "attempts")) == ("failed", "1")
    assert _field(browser, "event") == "batch.failed"
    assert _field(browser, "received") == "2026-05-06 10:01:00"
    assert _field(browser, "request id") == "req_failed-1"
    assert _one(browser, "pre.last-error").text == "RuntimeError: the warehouse API answered 503"
    headers = {
        cells[0].text: cells[1].text
        for cells in (
            row.find_elements(_by_css(), "td") for row in _all(browser, "table.headers tbody tr")
        )
    }
    record = _record(filled.url, key)
    assert headers["Runflow-Signature"] == sign(record.body, SECRET)
    assert headers["Runflow-Request-Id"] == "req_failed-1"
    body = _one(browser, "pre.body").text
    assert body.startswith('{\n  "event": "batch.failed",')  # indented JSON
    assert f"{len(record.body)} bytes" in _one(browser, "h2 small").text
    # Read-only: no button, only the hint of how to allow it.
    assert _all(browser, "form.retry") == []
    assert "--allow-retry" in _one(browser, "main").text


def test_a_duplicate_delivery_shows_on_the_callback_page(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    browser.get(_detail_url(serve(filled.url), filled.keys["processed-1"]))
    assert _field(browser, "deliveries") == "2 (1 duplicate)"
    assert _field(browser, "state") == "processed"
    assert _one(browser, ".last-error").text == "none"


def test_an_event_holding_a_script_tag_is_shown_as_text_on_every_page(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    base = serve(filled.url)
    browser.get(base + "/")
    _one(browser, "input[name=event]").send_keys(XSS_EVENT)
    _submit(browser, _one(browser, ".filters button"))
    [(key, state, event)] = _rows(browser)
    assert (key, state, event) == (filled.keys["xss"], "unhandled", XSS_EVENT)
    assert _all(browser, "main script") == []
    _submit(browser, _one(browser, "td.key a"))
    assert _field(browser, "event") == XSS_EVENT
    assert _one(browser, "h1 code").text == filled.keys["xss"]
    assert "<img src=x onerror=alert(2)>" in _one(browser, "pre.body").text
    assert XSS_HEADER in _one(browser, "table.headers").text
    assert _all(browser, "main script, main img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.accept()
    # In the HTML itself every request value is escaped (the CSP is a second wall, not the first).
    for page in ("/", "/?" + str(httpx.QueryParams({"event": XSS_EVENT}))):
        text = httpx.get(base + page).text
        assert "<script" not in text
        assert escape(XSS_EVENT) in text
    detail = httpx.get(_detail_url(base, filled.keys["xss"])).text
    assert "<script" not in detail
    assert "<img" not in detail
    assert escape(XSS_HEADER) in detail


# --- retry -----------------------------------------------------------------------------------


def _succeed(_context: CallbackContext) -> None:
    return None


def test_retrying_a_failed_callback_with_a_handler_runs_it_and_the_page_says_so(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    key = filled.keys["failed-1"]
    base = serve(filled.url, allow_retry=True, handler=_succeed)
    browser.get(_detail_url(base, key))
    assert "runs the handler now" in _one(browser, "form.retry").text
    _submit(browser, _one(browser, "form.retry button"))
    assert _one(browser, ".notice").text == (
        "Retried: the handler ran and the callback is processed."
    )
    assert _field(browser, "state") == "processed"
    assert _all(browser, "form.retry") == []  # a processed callback has nothing to retry
    assert _record(filled.url, key).state == "processed"
    browser.get(base + "/")
    assert (_count(browser, "processed"), _count(browser, "failed")) == (5, 1)


def test_retrying_a_dead_callback_without_a_handler_leaves_it_due_for_the_worker(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    key = filled.keys["dead"]
    browser.get(_detail_url(serve(filled.url, allow_retry=True), key))
    assert _one(browser, "pre.last-error").text == "ValueError: the run's output is gone"
    _submit(browser, _one(browser, "form.retry button"))
    assert (
        "Due again: a running 'serve --inbox' worker will run it." in _one(browser, ".notice").text
    )
    assert (_field(browser, "state"), _field(browser, "attempts")) == ("received", "0")
    record = _record(filled.url, key)
    assert (record.state, record.attempts) == ("received", 0)


def test_a_processed_callback_offers_no_retry_even_when_retry_is_allowed(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    browser.get(_detail_url(serve(filled.url, allow_retry=True), filled.keys["processed-2"]))
    assert _all(browser, "form.retry") == []
    assert "retry allowed" in _one(browser, "header").text


def test_without_allow_retry_there_is_no_button_and_a_post_is_refused_403(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    key = filled.keys["failed-2"]
    base = serve(filled.url)
    browser.get(_detail_url(base, key))
    assert _all(browser, "form.retry") == []
    assert _all(browser, "button") == []
    answer = httpx.post(base + "/retry", data={"key": key, "csrf": "anything"})
    assert answer.status_code == 403
    assert "read-only" in answer.text
    assert _record(filled.url, key).state == "failed"


def test_a_retry_without_the_pages_csrf_token_is_refused_403(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    key = filled.keys["failed-2"]
    base = serve(filled.url, allow_retry=True)
    # In the browser: the page's own form, its hidden token changed.
    browser.get(_detail_url(base, key))
    browser.execute_script(
        "arguments[0].value = 'forged'", _one(browser, "form.retry input[name=csrf]")
    )
    _submit(browser, _one(browser, "form.retry button"))
    assert _one(browser, "h1").text == "Refused"
    assert "not from this page" in _one(browser, ".problem").text
    # Outside it: no token, a wrong one, or the right one from another site.
    page = httpx.get(_detail_url(base, key)).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    forged: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"key": key}, {}),
        ({"key": key, "csrf": "forged"}, {}),
        ({"key": key, "csrf": csrf[:-1]}, {}),
        ({"key": key, "csrf": csrf}, {"Origin": "http://evil.example"}),
        ({"key": key, "csrf": csrf}, {"Origin": "null"}),
        ({"key": key, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
        ({"key": key, "csrf": csrf}, {"Sec-Fetch-Site": "same-site"}),
    ]
    for form, headers in forged:
        answer = httpx.post(base + "/retry", data=form, headers=headers)
        assert answer.status_code == 403, (form, headers)
    assert _record(filled.url, key).state == "failed"
    # The same form from the page's own origin goes through.
    origin = base.removesuffix("/")
    answer = httpx.post(
        base + "/retry",
        data={"key": key, "csrf": csrf},
        headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 303
    assert _record(filled.url, key).state == "received"


# --- access ----------------------------------------------------------------------------------


def test_without_a_token_only_a_loopback_host_name_is_served(
    filled: Filled, serve: Callable[..., str]
) -> None:
    base = serve(filled.url)
    assert httpx.get(base + "/").status_code == 200
    port = base.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(base + "/", headers={"Host": host}).status_code == 200, host
    # A DNS name rebound to 127.0.0.1 by another site's page is refused.
    assert httpx.get(base + "/", headers={"Host": f"evil.example:{port}"}).status_code == 403


def test_every_page_forbids_scripts_and_is_never_cached(
    filled: Filled, serve: Callable[..., str]
) -> None:
    base = serve(filled.url)
    for answer in (
        httpx.get(base + "/"),
        httpx.get(_detail_url(base, filled.keys["dead"])),
        httpx.get(base + "/?state=lost"),
    ):
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src" not in policy  # default-src 'none': no script may run
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-frame-options"] == "DENY"


def test_a_bad_filter_or_an_unknown_key_is_a_page_saying_so(
    filled: Filled, serve: Callable[..., str]
) -> None:
    base = serve(filled.url)
    for query, fragment in (
        ("state=lost", "state must be one of"),
        ("since=yesterday", "received from is not a date and time"),
        ("page=0", "page must be a positive number"),
    ):
        answer = httpx.get(f"{base}/?{query}")
        assert (answer.status_code, fragment in answer.text) == (400, True), query
    unknown = httpx.get(_detail_url(base, "batch:<nope>:batch.succeeded"))
    assert unknown.status_code == 404
    assert "batch:&lt;nope&gt;:batch.succeeded" in unknown.text
    assert httpx.get(base + "/callback").status_code == 400
    # A page past the last one shows the last one.
    assert "page 1 of 1" in httpx.get(base + "/?page=9").text


def test_with_a_token_the_cli_serves_only_requests_that_carry_it_and_never_prints_it(
    browser: WebDriver, filled: Filled, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNFLOW_")}
    env["RUNFLOW_CALLBACK_WEB_TOKEN"] = TOKEN
    log = tmp_path / "web.log"
    argv = [sys.executable, "-m", "runflow_callbacks", "inbox", "web", "--store", filled.url]
    with serve_process([*argv, "--port", str(port)], port=port, env=env, log_path=log):
        assert httpx.get(base + "/").status_code == 401
        assert (
            httpx.get(base + "/", headers={"Authorization": "Bearer " + "x" * 32}).status_code
            == 401
        )
        bearer = httpx.get(base + "/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (bearer.status_code, "read-only" in bearer.text) == (200, True)

        browser.get(base + "/")
        assert "needs its token" in _one(browser, "body").text
        browser.get(f"{base}/?state=dead&token={TOKEN}")
        assert browser.current_url == f"{base}/?state=dead"  # the token left the address
        assert [key for key, _state, _event in _rows(browser)] == [filled.keys["dead"]]
        cookie = browser.get_cookie(SIGN_IN_COOKIE)
        assert cookie is not None
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert TOKEN not in cookie["value"]
        browser.get(_detail_url(base, filled.keys["dead"]))  # the cookie keeps it signed in
        assert _field(browser, "state") == "dead"
    output = log.read_text()
    assert f"runflow-callbacks inbox web: {base}/ (read-only; token required" in output
    assert TOKEN not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "inbox.example.com", ""])
def test_the_cli_refuses_a_host_that_is_not_loopback_without_a_token(
    filled: Filled,
    host: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNFLOW_CALLBACK_WEB_TOKEN", raising=False)
    assert main(["inbox", "web", "--store", filled.url, "--host", host, "--port", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("runflow-callbacks inbox: --host ")
    assert "pass --token" in line


def test_the_cli_checks_its_token_and_options_before_serving(
    filled: Filled, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNFLOW_CALLBACK_WEB_TOKEN", raising=False)
    store = ["--store", filled.url, "--port", "0"]
    for argv, fragment in (
        (["--token", "short-secret"], "--token: the web token must be at least 16"),
        (["--token", "a token with spaces in it"], "without spaces"),
        (["--handler", "inbox_handlers:succeed"], "add --allow-retry"),
    ):
        assert main(["inbox", "web", *store, *argv]) == 1
        err = capsys.readouterr().err
        assert fragment in err, err
        assert "short-secret" not in err
    monkeypatch.setenv("RUNFLOW_CALLBACK_WEB_TOKEN", "tiny")
    assert main(["inbox", "web", *store]) == 1
    assert "$RUNFLOW_CALLBACK_WEB_TOKEN: the web token" in capsys.readouterr().err


def test_the_cli_does_not_create_a_store_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    assert main(["inbox", "web", "--store", f"sqlite:///{missing}", "--port", "0"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_only_this_machines_own_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- the rejected requests -------------------------------------------------------------------


async def _reject(url: str) -> list[bytes]:
    """Two requests refused by a receiver that keeps them: a wrong secret, then a bad body."""
    store = open_store(url)
    receiver = CallbackReceiver(secrets=SECRET, store=store, keep_rejected=10, clock=Clock())
    forged = _xss_body()
    bodies = [forged, b"not json at all"]
    transport = httpx.ASGITransport(app=receiver)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        await client.post(
            "/callbacks/runflow",
            content=forged,
            headers={
                "Runflow-Signature": sign(forged, "whsec_wrong_secret_0000"),
                "Runflow-Request-Id": "req_forged",
                "Authorization": "Bearer hush-hush",
            },
        )
        await client.post(
            "/callbacks/runflow",
            content=bodies[1],
            headers={"Runflow-Signature": sign(bodies[1], SECRET)},
        )
    await receiver.flush_rejections()
    await store.close()
    return bodies


def test_the_rejected_requests_page_lists_what_was_refused_newest_first(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    asyncio.run(_reject(filled.url))
    base = serve(filled.url)
    browser.get(base + "/")
    assert _count(browser, "rejected") == 2
    _submit(browser, _one(browser, 'a[data-count="rejected"]'))
    assert browser.current_url == base + "/rejected"
    rows = _all(browser, "table.rejected tbody tr")
    assert [row.get_attribute("data-reason") for row in rows] == [
        "invalid_payload",
        "signature_mismatch",
    ]
    forged = rows[1]
    assert "req_forged" in forged.text
    assert forged.find_element(_by_css(), "td.replayed").text == "no"
    forged.find_element(_by_css(), "summary").click()
    shown = forged.find_element(_by_css(), "pre.body").text
    assert "<script>alert(1)</script>" in shown  # shown as text, never run
    headers = forged.find_element(_by_css(), "pre.headers").text
    assert "runflow-signature" in headers
    assert "hush-hush" not in browser.page_source  # credentials are never kept
    assert _all(browser, "script") == []


def test_the_rejected_requests_page_says_how_to_keep_them(
    browser: WebDriver, filled: Filled, serve: Callable[..., str]
) -> None:
    browser.get(serve(filled.url) + "/rejected")
    assert "--keep-rejected N" in _one(browser, ".empty").text
    _submit(browser, _one(browser, "header .links a"))
    assert _rows(browser)  # back on the list of callbacks
