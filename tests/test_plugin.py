"""The pytest plugin: its fixtures here, and as a user gets them in a project of their own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import verify
from runflow_callbacks.testing import PayloadFactory, SignedRequest

if TYPE_CHECKING:
    from pathlib import Path

    from runflow_callbacks.testing import RunningFakeRunflow
    from runflow_callbacks.testing.plugin import Signer

USER_TESTS = """
from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from runflow_callbacks import CallbackContext, CallbackReceiver
from runflow_callbacks.testing import compact, flip_byte, serve_in_thread, without_signature

seen: list[str | None] = []


def create_app(secret: str) -> Starlette:
    receiver = CallbackReceiver(secrets=secret)

    @receiver.on_any
    async def record(context: CallbackContext) -> None:
        seen.append(context.subject_id)

    return Starlette(routes=[Route("/cb", receiver)])


def post(secret, request):
    with serve_in_thread(create_app(secret)) as base_url:
        return httpx.post(base_url + "/cb", content=request.body, headers=request.headers)


def test_signed_batch_is_accepted(runflow_secret, runflow_payloads, runflow_signer):
    request = runflow_signer(runflow_payloads.batch("batch.failed"))
    answer = post(runflow_secret, request)
    assert answer.status_code == 200
    assert seen[-1] == request.json()["batch_id"]


@pytest.mark.parametrize("tamper", [compact, flip_byte, without_signature])
def test_tampered_is_rejected(runflow_secret, runflow_payloads, runflow_signer, tamper):
    request = tamper(runflow_signer(runflow_payloads.run()))
    answer = post(runflow_secret, request)
    assert answer.status_code == 401


@pytest.mark.fake_runflow(max_attempts=2)
def test_fake_runflow_delivers(fake_runflow, runflow_secret):
    with serve_in_thread(create_app(runflow_secret)) as base_url:
        run = fake_runflow.create_run(callback_url=base_url + "/cb")
        delivery = fake_runflow.wait_for_delivery(run_id=run["id"])
    assert delivery.status_code == "succeeded"
    assert delivery.max_attempts == 2
    assert seen[-1] == run["id"]


def test_a_failing_user_test_fails(runflow_secret, runflow_payloads, runflow_signer):
    request = runflow_signer(runflow_payloads.batch())
    answer = post("whsec_not_the_one", request)
    assert answer.status_code == 200
"""


def test_user_project_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "test_endpoint.py").write_text(textwrap.dedent(USER_TESTS), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert "1 failed, 5 passed in" in result.stdout, result.stdout + result.stderr
    assert "test_a_failing_user_test_fails" in result.stdout


def test_fixtures_in_this_session(
    runflow_secret: str, runflow_payloads: PayloadFactory, runflow_signer: Signer
) -> None:
    assert runflow_secret.startswith("whsec_test_")
    assert runflow_signer.secret == runflow_secret
    assert runflow_secret not in repr(runflow_signer)
    request = runflow_signer(runflow_payloads.run("run.partial_succeeded"))
    assert isinstance(request, SignedRequest)
    assert verify(request.body, request.signature, runflow_secret).reveal() == runflow_secret


def test_payload_factory_is_seeded_from_the_test_id(
    request: pytest.FixtureRequest, runflow_payloads: PayloadFactory
) -> None:
    import zlib

    again = PayloadFactory(seed=zlib.crc32(request.node.nodeid.encode()))
    assert runflow_payloads.uuid7().int & ((1 << 74) - 1) == again.uuid7().int & ((1 << 74) - 1)


@pytest.mark.fake_runflow(api_key="rf_marked", max_attempts=1)
def test_fake_runflow_fixture_takes_marker_options(
    fake_runflow: RunningFakeRunflow, runflow_secret: str
) -> None:
    assert fake_runflow.api_key == "rf_marked"
    secrets = httpx.get(
        fake_runflow.base_url + "/v1/callback-secrets",
        headers={"Authorization": "Bearer rf_marked"},
    ).json()["items"]
    assert [item["key_prefix"] for item in secrets] == [runflow_secret[:12]]
    run = fake_runflow.create_run(callback_url=None)
    assert fake_runflow.deliveries(run_id=run["id"]) == []
