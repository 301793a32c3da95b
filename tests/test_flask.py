"""RunflowCallbacks, the Flask extension: under Flask's test client and a real server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask, request

from asgi_driver import OTHER_SECRET, PATH, SECRET, batch_body, run_body, signed
from runflow_callbacks import ConfigurationError, sign
from runflow_callbacks.flask import EXTENSION_KEY, RunflowCallbacks, get_callback
from test_wsgi import http_post, serving

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError

LIMIT = 4096
JSON = "application/json"


class Recorder:
    """A Flask app with one callback view and one ordinary route, and what reached them."""

    def __init__(self, **options: Any) -> None:
        self.contexts: list[CallbackContext] = []
        self.bodies: list[bytes] = []
        self.app = Flask(__name__)
        options.setdefault("secrets", SECRET)
        options.setdefault("max_body_bytes", LIMIT)
        self.extension = RunflowCallbacks(self.app, **options)

        @self.app.post(PATH)
        def runflow_callback() -> dict[str, Any]:
            context = get_callback()
            self.contexts.append(context)
            self.bodies.append(request.get_data())
            parsed = request.get_json()
            return {"received": context.event, "subject": parsed.get("batch_id")}

        @self.app.post("/orders")
        def orders() -> dict[str, Any]:
            with pytest.raises(LookupError, match="RunflowCallbacks"):
                get_callback()
            return {"echo": request.get_data(as_text=True)}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> FlaskClient:
    return recorder.app.test_client()


def post(client: FlaskClient, body: bytes, headers: list[tuple[bytes, bytes]]) -> TestResponse:
    named = {k.decode(): v.decode() for k, v in headers}
    named.pop("content-length", None)
    return client.post(PATH, data=body, headers=named)


def test_the_view_gets_the_typed_context_and_the_exact_body(
    recorder: Recorder, client: FlaskClient
) -> None:
    body = batch_body()
    response = post(client, body, signed(body, runflow_request_id="req-5"))
    assert response.status_code == 200
    assert response.get_json() == {
        "received": "batch.succeeded",
        "subject": "0190f2a4-0000-7000-8000-000000000002",
    }
    [context] = recorder.contexts
    assert context.body == body
    assert context.request_id == "req-5"
    assert context.signed
    assert recorder.bodies == [body]


def test_an_application_factory_installs_it_with_init_app() -> None:
    extension = RunflowCallbacks(secrets=SECRET, path="/hooks/runflow")

    def create_app() -> Flask:
        app = Flask(__name__)
        extension.init_app(app)

        @app.post("/hooks/runflow")
        def hook() -> dict[str, str | None]:
            return {"event": get_callback().event}

        return app

    app = create_app()
    assert app.extensions[EXTENSION_KEY] is extension
    body = run_body()
    client = app.test_client()
    ok = client.post("/hooks/runflow", data=body, headers={"Runflow-Signature": sign(body, SECRET)})
    assert (ok.status_code, ok.get_json()) == (200, {"event": "run.completed"})
    assert client.post("/hooks/runflow", data=body).status_code == 401


def test_installing_twice_on_one_app_is_refused(recorder: Recorder) -> None:
    with pytest.raises(ConfigurationError, match="already installed"):
        recorder.extension.init_app(recorder.app)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([], 401, "missing_signature"),
        ([(b"runflow-signature", b"xyz")], 401, "malformed_signature"),
        (
            [(b"runflow-signature", sign(batch_body(), OTHER_SECRET).encode())],
            401,
            "signature_mismatch",
        ),
    ],
)
def test_a_bad_signature_never_reaches_the_view(
    recorder: Recorder,
    client: FlaskClient,
    headers: list[tuple[bytes, bytes]],
    status: int,
    code: str,
) -> None:
    response = post(client, batch_body(), headers)
    assert (response.status_code, response.get_json()["error"]) == (status, code)
    assert recorder.contexts == []


def test_verified_bytes_that_are_not_a_callback_are_400(
    recorder: Recorder, client: FlaskClient
) -> None:
    response = post(client, b"[1, 2]", signed(b"[1, 2]"))
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_payload")
    assert recorder.contexts == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_another_method_is_our_405_before_flask_routes_it(client: FlaskClient, method: str) -> None:
    response = client.open(PATH, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"] == "method_not_allowed"


def test_a_content_length_over_the_limit_is_413(recorder: Recorder, client: FlaskClient) -> None:
    body = b"x" * (LIMIT + 1)
    response = post(client, body, signed(body))
    assert (response.status_code, response.get_json()["error"]) == (413, "payload_too_large")
    assert recorder.contexts == []


def test_unsigned_callbacks_are_accepted_only_when_allowed() -> None:
    recorder = Recorder(allow_unsigned=True)
    response = recorder.app.test_client().post(PATH, data=batch_body(), content_type=JSON)
    assert response.status_code == 200
    [context] = recorder.contexts
    assert not context.signed


def test_other_routes_pass_through_untouched(client: FlaskClient) -> None:
    response = client.post("/orders", data=b"plain text")
    assert (response.status_code, response.get_json()) == (200, {"echo": "plain text"})


def test_rejections_reach_the_extensions_rejected_and_are_logged_under_flask(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codes: list[str] = []

    class Counting(RunflowCallbacks):
        def rejected(self, error: RunflowCallbackError) -> None:
            codes.append(error.code)

    app = Flask(__name__)
    Counting(app, secrets=SECRET)
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    app.test_client().post(PATH, data=b"{}", headers={"Runflow-Request-Id": "req-7"})
    assert codes == ["missing_signature"]
    [record] = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert record.name == "runflow_callbacks.flask"
    assert "outcome=missing_signature" in record.getMessage()
    assert "request_id=req-7" in record.getMessage()


def test_no_repr_holds_the_secret(recorder: Recorder) -> None:
    text = repr(recorder.extension) + repr(recorder.app.wsgi_app)
    assert "RunflowCallbacks(paths=['/callbacks/runflow']" in text
    assert SECRET not in text


def test_without_flask_the_import_names_the_extra() -> None:
    code = "import sys\nsys.modules['flask'] = None\nimport runflow_callbacks.flask"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr
    assert "pip install 'runflow-callbacks[flask]'" in result.stderr


# --- a real server --------------------------------------------------------------------


@pytest.fixture
def port(recorder: Recorder) -> Iterator[int]:
    with serving(recorder.app) as port:
        yield port


def test_over_real_http_a_signed_callback_reaches_the_view(recorder: Recorder, port: int) -> None:
    body = batch_body()
    answer = http_post(port, body, {"Runflow-Signature": sign(body, SECRET), "Content-Type": JSON})
    assert answer.status == 200
    assert answer.json()["received"] == "batch.succeeded"
    assert recorder.bodies == [body]


def test_over_real_http_a_chunked_callback_is_verified_and_replayed(
    recorder: Recorder, port: int
) -> None:
    body = batch_body(metadata={"note": "n" * 1000})
    chunks = iter([body[:100], body[100:700], body[700:]])
    headers = {"Runflow-Signature": sign(body, SECRET), "Content-Type": JSON}
    answer = http_post(port, chunks, headers)
    assert answer.status == 200
    assert recorder.bodies == [body]


def test_over_real_http_rejections_are_answered_before_flask(recorder: Recorder, port: int) -> None:
    big = b"b" * (LIMIT * 3)
    streamed = http_post(port, iter([big[:LIMIT], big[LIMIT:]]), {"Runflow-Signature": "0" * 64})
    assert (streamed.status, streamed.json()["error"]) == (413, "payload_too_large")
    declared = http_post(port, big, {"Runflow-Signature": "0" * 64})
    assert (declared.status, declared.json()["error"]) == (413, "payload_too_large")
    body = batch_body()
    wrong = http_post(port, body, {"Runflow-Signature": sign(body, OTHER_SECRET)})
    assert json.loads(wrong.body) == {
        "error": "signature_mismatch",
        "detail": "Runflow-Signature does not match the body under any of 1 secret tried",
    }
    assert recorder.contexts == []
