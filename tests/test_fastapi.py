"""The FastAPI dependency: typed payloads, the same statuses, no FastAPI needed elsewhere."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from asgi_driver import PATH, SECRET, batch_body, run_body, signed
from runflow_callbacks import (
    BatchCallbackPayload,
    CallbackContext,
    CallbackMiddleware,
    CallbackPayload,
    ConfigurationError,
    RunCallbackPayload,
    sign,
)
from runflow_callbacks.fastapi import CallbackDependency
from runflow_callbacks.testing import serve_in_thread

if TYPE_CHECKING:
    from runflow_callbacks.errors import RunflowCallbackError


def build_app(dependency: CallbackDependency) -> FastAPI:
    app = FastAPI()

    @app.post(PATH)
    async def batch(
        request: Request,
        payload: BatchCallbackPayload = Depends(dependency.payload(BatchCallbackPayload)),  # noqa: B008 - FastAPI's idiom; Annotated cannot see locals here
    ) -> dict[str, Any]:
        body = await request.body()
        return {"batch_id": payload.subject_id, "body": len(body)}

    @app.api_route("/any", methods=["GET", "POST"])
    async def anything(
        context: CallbackContext = Depends(dependency),  # noqa: B008 - as above
    ) -> dict[str, Any]:
        return {"event": context.event, "signed": context.signed}

    @app.post("/payload")
    async def generic(
        payload: CallbackPayload = Depends(dependency.payload(CallbackPayload)),  # noqa: B008 - as above
    ) -> dict[str, Any]:
        return {"kind": payload.kind}

    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def headers_of(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in signed(body, secret)}


async def test_the_route_gets_the_typed_payload_and_the_body_still_reads() -> None:
    body = batch_body()
    async with client(build_app(CallbackDependency(secrets=SECRET))) as http:
        response = await http.post(PATH, content=body, headers=headers_of(body))
    assert response.status_code == 200
    assert response.json() == {
        "batch_id": "0190f2a4-0000-7000-8000-000000000002",
        "body": len(body),
    }


async def test_the_context_and_the_generic_payload() -> None:
    body = run_body()
    async with client(build_app(CallbackDependency(secrets=SECRET))) as http:
        context = await http.post("/any", content=body, headers=headers_of(body))
        generic = await http.post("/payload", content=body, headers=headers_of(body))
    assert context.json() == {"event": "run.completed", "signed": True}
    assert generic.json() == {"kind": "run"}


async def test_a_payload_of_another_kind_is_400() -> None:
    body = run_body()
    async with client(build_app(CallbackDependency(secrets=SECRET))) as http:
        response = await http.post(PATH, content=body, headers=headers_of(body))
    assert response.status_code == 400
    assert response.json()["detail"]["error"] == "unexpected_payload"


async def test_rejections_have_the_middleware_statuses() -> None:
    dependency = CallbackDependency(secrets=SECRET, max_body_bytes=2048)
    body = batch_body()
    big = batch_body(metadata={"pad": "x" * 4000})
    async with client(build_app(dependency)) as http:
        forged = await http.post(PATH, content=body, headers={"Runflow-Signature": "0" * 64})
        missing = await http.post(PATH, content=body)
        too_big = await http.post(PATH, content=big, headers=headers_of(big))
        not_object = await http.post(PATH, content=b"[]", headers=headers_of(b"[]"))
        method = await http.get("/any")
    assert [r.status_code for r in (forged, missing, too_big, not_object, method)] == [
        401,
        401,
        413,
        400,
        405,
    ]
    assert forged.json()["detail"]["error"] == "signature_mismatch"
    assert missing.json()["detail"]["error"] == "missing_signature"
    assert method.headers["allow"] == "POST"
    assert SECRET not in forged.text


async def test_allow_unsigned() -> None:
    body = run_body()
    async with client(build_app(CallbackDependency(secrets=SECRET, allow_unsigned=True))) as http:
        response = await http.post("/any", content=body)
    assert response.json() == {"event": "run.completed", "signed": False}


async def test_behind_the_middleware_the_dependency_reuses_its_context() -> None:
    app = build_app(CallbackDependency(secrets="whsec_never_used"))
    guarded = CallbackMiddleware(app, secrets=SECRET, path=PATH)
    body = batch_body()
    async with client(guarded) as http:
        response = await http.post(PATH, content=body, headers=headers_of(body))
    assert response.status_code == 200
    assert response.json()["body"] == len(body)


def test_payload_wants_a_payload_model() -> None:
    with pytest.raises(ConfigurationError, match="CallbackPayload model"):
        CallbackDependency(secrets=SECRET).payload(dict)  # type: ignore[type-var]


def test_the_dependency_answers_a_chunked_callback_under_uvicorn() -> None:
    body = batch_body(metadata={"pad": "q" * 30_000})

    def chunks() -> Any:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    app = build_app(CallbackDependency(secrets=SECRET))
    with serve_in_thread(app, log_config=None) as url:
        response = httpx.post(
            url + PATH, content=chunks(), headers={"Runflow-Signature": sign(body, SECRET)}
        )
    assert response.status_code == 200
    assert response.json()["body"] == len(body)


def test_the_package_imports_without_fastapi_and_says_which_extra_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "import runflow_callbacks, runflow_callbacks.asgi, runflow_callbacks.receiver\n"
        "try:\n"
        "    import runflow_callbacks.fastapi\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'runflow-callbacks[fastapi]'" in result.stdout


def test_importing_the_package_does_not_import_fastapi() -> None:
    script = "import sys, runflow_callbacks\nprint('fastapi' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_run_payload_model_is_accepted_too() -> None:
    dependency = CallbackDependency(secrets=SECRET).payload(RunCallbackPayload)
    assert dependency.__name__ == "runflow_RunCallbackPayload"


async def test_a_client_leaving_mid_body_ends_the_request_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asgi_driver import drive

    called: list[bool] = []
    dependency = CallbackDependency(secrets=SECRET)
    app = FastAPI()

    @app.post(PATH)
    async def route(context: CallbackContext = Depends(dependency)) -> dict[str, str]:  # noqa: B008 - FastAPI's idiom
        called.append(True)
        return {}

    body = batch_body()
    await drive(app, chunks=[body[:10], body[10:]], headers=signed(body), disconnect_after=1)
    assert called == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_rejections_reach_the_rejected_hook() -> None:

    seen: list[str] = []

    class Counting(CallbackDependency):
        async def rejected(self, error: RunflowCallbackError) -> None:
            seen.append(type(error).__name__)

    body = batch_body()
    async with client(build_app(Counting(secrets=SECRET))) as http:
        await http.post(PATH, content=body, headers={"Runflow-Signature": "0" * 64})
        await http.post(PATH, content=body, headers=headers_of(body))
    assert seen == ["SignatureMismatchError"]
