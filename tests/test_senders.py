"""Several senders on one receiver: ``CallbackRouter``, ``create_app(senders=...)``, ``serve
--config`` and the ``--sender*`` flags."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from runflow_callbacks import CallbackContext, CallbackReceiver, sign
from runflow_callbacks.app import create_app
from runflow_callbacks.cli import build_parser, main
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.senders import (
    CallbackRouter,
    Sender,
    load_config,
    sender_key,
    sender_of,
)
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory, free_port, serve_in_thread, wait_for_port
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from runflow_callbacks.stores import CallbackStore

PROD = "whsec_senders_prod_0123456789abcdef"
STAGING = "whsec_senders_staging_0123456789ab"
PROD_PATH = "/callbacks/prod"
STAGING_PATH = "/callbacks/staging"


def _body(seed: int = 1) -> bytes:
    return dumps_payload(PayloadFactory(seed=seed).batch())


def _headers(body: bytes, secret: str) -> dict[str, str]:
    return {"Runflow-Signature": sign(body, secret), "Content-Type": "application/json"}


class Recorder:
    """A handler per sender, noting the keys it ran."""

    def __init__(self) -> None:
        self.runs: dict[str, list[str | None]] = {"prod": [], "staging": []}

    def handler(self, name: str) -> Any:
        async def handle(context: CallbackContext) -> None:
            self.runs[name].append(context.key)

        return handle


def _router_app(
    store: CallbackStore, recorder: Recorder, *, inbox: bool = False, **options: Any
) -> Any:
    return create_app(
        senders=[
            Sender(name="prod", path=PROD_PATH, secrets=[PROD], handler=recorder.handler("prod")),
            Sender(
                name="staging",
                path=STAGING_PATH,
                secrets=STAGING,
                handler=recorder.handler("staging"),
                max_body_bytes=4096,
            ),
        ],
        store=store,
        inbox=inbox,
        **options,
    )


# --- the library ------------------------------------------------------------------------------


async def test_each_path_is_its_sender_with_its_secrets_and_handler() -> None:
    recorder = Recorder()
    store = open_store("memory://")
    app = _router_app(store, recorder)
    body = _body()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        prod = await client.post(PROD_PATH, content=body, headers=_headers(body, PROD))
        staging = await client.post(STAGING_PATH, content=body, headers=_headers(body, STAGING))
        crossed = await client.post(PROD_PATH, content=body, headers=_headers(body, STAGING))
        crossed_back = await client.post(STAGING_PATH, content=body, headers=_headers(body, PROD))
        again = await client.post(PROD_PATH, content=body, headers=_headers(body, PROD))
        nowhere = await client.post(
            "/callbacks/runflow", content=body, headers=_headers(body, PROD)
        )
        health = await client.get("/healthz")
    assert (prod.status_code, prod.json()) == (200, {"status": "processed"})
    assert (staging.status_code, staging.json()) == (200, {"status": "processed"})
    assert (crossed.status_code, crossed.json()["error"]) == (401, "signature_mismatch")
    assert crossed_back.status_code == 401
    assert again.json()["status"] == "duplicate"
    assert nowhere.status_code == 404
    assert health.json() == {"status": "ok"}
    # The same batch from two senders: two callbacks, each run once by its own handler.
    [prod_key], [staging_key] = recorder.runs["prod"], recorder.runs["staging"]
    assert prod_key is not None
    assert staging_key is not None
    assert prod_key.startswith("prod/batch:")
    assert staging_key == "staging/" + prod_key.removeprefix("prod/")
    assert (sender_of(prod_key), sender_of(staging_key)) == ("prod", "staging")
    stats = await store.stats()
    assert (stats.received, stats.processed, stats.duplicates) == (2, 2, 1)
    stored = {record.key for record in await store.list_callbacks()}
    assert stored == {prod_key, staging_key}


async def test_per_sender_options_apply_to_that_sender_only() -> None:
    recorder = Recorder()
    app = _router_app(open_store("memory://"), recorder)
    big = dumps_payload(
        {**PayloadFactory(seed=2).batch().model_dump(mode="json"), "pad": "x" * 8000}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        prod = await client.post(PROD_PATH, content=big, headers=_headers(big, PROD))
        staging = await client.post(STAGING_PATH, content=big, headers=_headers(big, STAGING))
    assert prod.status_code == 200
    assert staging.status_code == 413
    receivers = app.state.router.receivers
    assert receivers["staging"].options.max_body_bytes == 4096
    # One budget of unverified bytes for every sender.
    assert receivers["prod"].budget is receivers["staging"].budget


async def test_inbox_mode_runs_each_senders_callbacks_with_its_own_handler() -> None:
    recorder = Recorder()
    store = open_store("memory://")
    router = CallbackRouter(
        [
            Sender(name="prod", path=PROD_PATH, secrets=PROD, handler=recorder.handler("prod")),
            Sender(
                name="staging",
                path=STAGING_PATH,
                secrets=STAGING,
                handler=recorder.handler("staging"),
            ),
        ],
        store=store,
        mode="inbox",
    )
    assert router.runs_worker
    bodies = [_body(seed) for seed in range(3)]
    transport = httpx.ASGITransport(app=router)
    async with (
        router.worker(),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        for body in bodies:
            for path, secret in ((PROD_PATH, PROD), (STAGING_PATH, STAGING)):
                answer = await client.post(path, content=body, headers=_headers(body, secret))
                assert answer.json()["status"] == "recorded"
        for _ in range(200):
            stats = await store.stats()
            if stats.processed == 6:
                break
            await asyncio.sleep(0.02)
    assert stats.processed == 6
    for name in ("prod", "staging"):
        keys = recorder.runs[name]
        assert len(keys) == len(set(keys)) == 3
        assert {sender_of(key) for key in keys} == {name}


async def test_the_worker_keeps_what_no_sender_takes_as_unhandled() -> None:
    recorder = Recorder()
    store = open_store("memory://")
    router = CallbackRouter(
        [
            Sender(name="prod", path=PROD_PATH, secrets=PROD, handler=recorder.handler("prod")),
            Sender(name="staging", path=STAGING_PATH, secrets=STAGING),  # record only
        ],
        store=store,
        mode="inbox",
    )
    body = _body()
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.post(STAGING_PATH, content=body, headers=_headers(body, STAGING))
        await client.post(PROD_PATH, content=body, headers=_headers(body, PROD))
    [staging_key] = [r.key for r in await store.list_callbacks() if r.key.startswith("staging/")]
    outcomes = await router.run_due()
    assert sorted(outcome.status for outcome in outcomes) == ["processed", "unhandled"]
    staging_record = await store.get(staging_key)
    assert staging_record is not None
    assert staging_record.state == "unhandled"
    assert len(recorder.runs["prod"]) == 1

    # A callback recorded by a receiver of one sender on the same store has no sender's key.
    single = CallbackReceiver(secrets=PROD, store=store, mode="inbox")
    transport = httpx.ASGITransport(app=single)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.post(PROD_PATH, content=body, headers=_headers(body, PROD))
    [outcome] = await router.run_due()
    assert outcome.status == "unhandled"
    unprefixed = [r for r in await store.list_callbacks() if sender_of(r.key) is None]
    assert [record.state for record in unprefixed] == ["unhandled"]
    assert len(recorder.runs["prod"]) == 1


def test_a_sender_key_prefixes_the_key_function() -> None:
    payload = PayloadFactory(seed=1).batch()

    def custom(_payload: Any, _body: bytes) -> str:
        return "mine"

    assert sender_key("prod", custom)(payload, b"{}") == "prod/mine"
    assert sender_key("prod")(payload, b"{}").startswith("prod/batch:")
    assert sender_of("batch:a/b:batch.succeeded") is None
    assert sender_of(None) is None


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Sender(name="a b", path="/x", secrets=PROD), "sender's name"),
        (lambda: Sender(name="a", path="x", secrets=PROD), "must start with '/'"),
        (lambda: Sender(name="a", path="/healthz", secrets=PROD), "receiver's own"),
        (
            lambda: Sender(name="a", path="/x", secrets=PROD, poll_interval=timedelta(seconds=3)),
            "shared",
        ),
        (lambda: Sender(name="a", path="/x", secrets=PROD, max_tries=0), "sender 'a': max_tries"),
        (
            lambda: CallbackRouter(
                [
                    Sender(name="a", path="/x", secrets=PROD),
                    Sender(name="a", path="/y", secrets=PROD),
                ]
            ),
            "two senders are named 'a'",
        ),
        (
            lambda: CallbackRouter(
                [
                    Sender(name="a", path="/x", secrets=PROD),
                    Sender(name="b", path="/x", secrets=PROD),
                ]
            ),
            "senders 'a' and 'b' both take /x",
        ),
        (lambda: CallbackRouter([]), "at least one sender"),
        (
            lambda: create_app(senders=[Sender(name="a", path="/x", secrets=PROD)], secrets=PROD),
            "not both",
        ),
        (lambda: create_app(store="memory://"), "needs secrets"),
    ],
)
def test_a_bad_sender_setup_is_one_configuration_error(build: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        build()


def test_a_senders_repr_shows_no_secret() -> None:
    assert PROD not in repr(Sender(name="prod", path="/p", secrets=PROD, max_tries=3))


# --- the config file --------------------------------------------------------------------------

VALID = """
store = "memory://"
port = 0
log_format = "json"
handler = "senders_handlers:default"
max_tries = 3
lease = 60

[[sender]]
name = "prod"
path = "/callbacks/prod"
secrets_env = "PROD_SECRETS"
handler = "senders_handlers:prod"
mode = "inbox"
max_body_bytes = 1048576

[[sender]]
name = "staging"
path = "/callbacks/staging"
secrets_env = "STAGING_SECRETS"
handler_timeout = 0
backoff = "5:60"
"""

HANDLERS = textwrap.dedent(
    """
    import os

    def _note(who, context):
        with open(os.environ["SENDERS_LOG"], "a") as log:
            log.write(f"{who} {context.key}\\n")

    def prod(context):
        _note("prod", context)

    def staging(context):
        _note("staging", context)

    def default(context):
        _note("default", context)
    """
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "senders_handlers.py").write_text(HANDLERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SENDERS_LOG", str(tmp_path / "senders.log"))
    monkeypatch.setenv("PROD_SECRETS", f"whsec_old_0123456789abc,{PROD}")
    monkeypatch.setenv("STAGING_SECRETS", STAGING)
    for name in list(os.environ):
        if name.startswith("RUNFLOW_CALLBACK_"):
            monkeypatch.delenv(name)
    return tmp_path


def _write(workdir: Path, text: str, *, mode: int = 0o600, name: str = "rc.toml") -> str:
    path = workdir / name
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return str(path)


def _planned(argv: list[str]) -> Any:
    from runflow_callbacks.cli.serve import _plan

    args = build_parser(["serve"]).parse_args(["serve", *argv])
    _plan(args)
    return args


def test_a_valid_file_gives_the_settings_and_the_senders(workdir: Path) -> None:
    args = _planned(["--config", _write(workdir, VALID)])
    assert (args.store, args.port, args.log_format) == ("memory://", 0, "json")
    prod, staging = args.sender_list
    assert (prod.name, prod.path, staging.name, staging.path) == (
        "prod",
        PROD_PATH,
        "staging",
        STAGING_PATH,
    )
    assert prod.changes == {"mode": "inbox", "max_body_bytes": 1048576}
    assert staging.changes["handler_timeout"] is None
    assert staging.changes["backoff"].cap == timedelta(seconds=60)
    assert prod.handler.__name__ == "prod"
    assert staging.handler.__name__ == "default"  # the top-level handler
    assert [secret.label for secret in prod.secrets] == [
        "prod $PROD_SECRETS 0",
        "prod $PROD_SECRETS 1",
    ]
    from runflow_callbacks.cli.serve import _options

    assert _options(args) == {"max_tries": 3, "lease": timedelta(seconds=60)}
    app = create_app(senders=args.sender_list, store="memory://", **_options(args))
    receivers = app.state.router.receivers
    assert receivers["prod"].options.mode == "inbox"
    assert receivers["staging"].options.mode == "sync"
    assert receivers["staging"].options.max_tries == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("store = ", "rc.toml: not valid TOML"),
        ("stor = 'memory://'", r"rc.toml: stor: unknown key: did you mean 'store'\?"),
        ("port = '80'", "rc.toml: port: must be a whole number, not '80'"),
        ("port = 99999", "rc.toml: port: .* not a port number"),
        ("metrics = 1", "rc.toml: metrics: must be true/false"),
        ("log_level = 'loud'", "rc.toml: log_level: must be one of"),
        ("max_tries = true", "rc.toml: max_tries: must be a whole number, not True"),
        ("lease = 0", "rc.toml: lease: must be more than 0 seconds"),
        ("retention = 'soon'", "rc.toml: retention: .* not a duration"),
        ("key = 'nowhere_at_all:key'", "rc.toml: key: cannot import module 'nowhere_at_all'"),
        ("sender = 3", "rc.toml: sender: must be \\[\\[sender\\]\\] tables"),
        ("[[sender]]\npath = '/a'", r"rc.toml: sender\[0\].name: missing"),
        ("[[sender]]\nname = 'a b'\npath = '/a'", r"rc.toml: sender\[0\].name: .*sender's name"),
        ("[[sender]]\nname = 'a'\nsecrets_env = 'X'", "rc.toml: sender.a.path: missing"),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nmax_body_byte = 3",
            "rc.toml: sender.a.max_body_byte: unknown key: did you mean 'max_body_bytes'",
        ),
        ("[[sender]]\nname = 'a'\npath = 'a'", "rc.toml: sender.a.path: .*start with '/'"),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nworker_batch_size = 2",
            "rc.toml: sender.a.worker_batch_size: shared by every sender",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nmode = 'later'",
            "rc.toml: sender.a.mode: must be 'sync' or 'inbox'",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\n[[sender]]\nname = 'a'\npath = '/b'",
            "rc.toml: sender.a.name: two",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\n[[sender]]\nname = 'b'\npath = '/a'",
            "rc.toml: sender.b.path: /a is already sender 'a'",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nsecrets = ['whsec_x']\nsecrets_env = 'X'",
            "rc.toml: sender.a: give secrets or secrets_env, not both",
        ),
        ("[[sender]]\nname = 'a'\npath = '/a'\nsecrets = 3", "rc.toml: sender.a.secrets: must be"),
    ],
)
def test_every_bad_file_is_one_line_naming_the_file_and_the_key(
    workdir: Path, text: str, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as raised:
        _planned(["--config", _write(workdir, text)])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[sender]]\nname = 'a'\npath = '/a'", "rc.toml: sender.a: no secrets"),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nsecrets_env = 'NOT_SET_ANYWHERE'",
            r"rc.toml: sender.a.secrets_env: \$NOT_SET_ANYWHERE is not set",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nsecrets_env = 'PROD_SECRETS'\n"
            "handler = 'senders_handlers:nothing'",
            "rc.toml: sender.a.handler: 'senders_handlers' has no attribute 'nothing'",
        ),
        (
            "[[sender]]\nname = 'a'\npath = '/a'\nsecrets_env = 'PROD_SECRETS'\n"
            "handler = 'no_such_module_here:handle'",
            "rc.toml: sender.a.handler: cannot import module 'no_such_module_here'",
        ),
    ],
)
def test_missing_secrets_and_handlers_that_cannot_be_imported(
    workdir: Path, text: str, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        _planned(["--config", _write(workdir, text)])


def test_a_file_holding_secrets_must_be_private(workdir: Path) -> None:
    text = f"[[sender]]\nname = 'prod'\npath = '/p'\nsecrets = ['{PROD}']\n"
    with pytest.raises(ConfigurationError, match=r"rc.toml: holds secrets .*mode 0644.*chmod 600"):
        load_config(_write(workdir, text, mode=0o644))
    with pytest.raises(ConfigurationError, match="group or others"):
        load_config(_write(workdir, text, mode=0o640))
    [sender] = _planned(["--config", _write(workdir, text, mode=0o600)]).sender_list
    assert [secret.reveal() for secret in sender.secrets] == [PROD]
    # Without secrets in it, the file may be read by anyone.
    assert load_config(_write(workdir, VALID, mode=0o644)).senders


def test_a_missing_file_is_one_line(workdir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nowhere\.toml: cannot read"):
        _planned(["--config", str(workdir / "nowhere.toml")])


def test_flags_override_the_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runflow_callbacks.cli.serve import _options

    monkeypatch.setenv("OTHER_SECRETS", "whsec_other_0123456789abcdef")
    args = _planned(
        [
            "--config",
            _write(workdir, VALID),
            "--port",
            "8123",
            "--max-tries",
            "5",
            "--sender",
            "staging=/callbacks/stage2",
            "--sender-handler",
            "staging=senders_handlers:staging",
            "--sender-option",
            "prod.mode=sync",
            "--sender-option",
            "prod.lease=30",
            "--sender",
            "qa=/callbacks/qa",
            "--sender-secrets-env",
            "qa=OTHER_SECRETS",
        ]
    )
    assert (args.port, args.log_format) == (8123, "json")
    assert _options(args) == {"max_tries": 5, "lease": timedelta(seconds=60)}
    prod, staging, qa = args.sender_list
    assert prod.changes == {
        "mode": "sync",
        "max_body_bytes": 1048576,
        "lease": timedelta(seconds=30),
    }
    assert (staging.path, staging.handler.__name__) == ("/callbacks/stage2", "staging")
    assert (qa.name, qa.path, qa.handler.__name__) == ("qa", "/callbacks/qa", "default")


def test_a_variable_also_overrides_the_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_STORE", "sqlite:///./from-env.db")
    parser = build_parser(["serve"])  # defaults are read from the environment here
    from runflow_callbacks.cli.serve import _plan

    args = parser.parse_args(["serve", "--config", _write(workdir, VALID)])
    _plan(args)
    assert args.store == "sqlite:///./from-env.db"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--sender", "prod"], "--sender takes NAME=PATH"),
        (["--sender", "prod=callbacks"], "--sender prod: the callback path must start with '/'"),
        (["--sender", "prod=/p"], "--sender prod: no secrets"),
        (["--sender-handler", "nobody=x:y"], "--sender-handler nobody: no sender 'nobody'"),
        (["--sender", "p=/p", "--sender-option", "p.lease=soon"], "--sender-option p.lease: "),
        (["--sender", "p=/p", "--sender-option", "p.clock=x"], "unknown receiver option 'clock'"),
        (["--sender", "p=/p", "--sender-option", "p.poll_interval=1"], "shared by every sender"),
        (["--sender", "p=/p", "--sender-option", "lease=1"], "NAME.OPTION=VALUE"),
        (
            ["--sender", "p=/p", "--sender-secret", f"p={PROD}", "--sender-secrets-env", "p=X"],
            "not both",
        ),
        (
            ["--sender", "p=/p", "--sender-secrets-env", "p=PROD_SECRETS", "--path", "/x"],
            "--secret and --path are for one sender",
        ),
        (["--sender-secret", PROD], "--sender-secret takes NAME=SECRET, not 'NAME=...'"),
    ],
)
def test_bad_sender_flags_are_one_line(workdir: Path, argv: list[str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as raised:
        _planned(argv)
    assert PROD not in str(raised.value)


def test_without_config_or_senders_serve_is_the_one_sender_it_was(workdir: Path) -> None:
    args = _planned(["--path", "/mine"])
    assert args.sender_list == []
    assert args.path == "/mine"


def test_a_file_without_senders_configures_the_one_sender(workdir: Path) -> None:
    args = _planned(["--config", _write(workdir, "store = 'memory://'\nmax_tries = 2\n")])
    assert args.sender_list == []
    assert args.store == "memory://"
    from runflow_callbacks.cli.serve import _options

    assert _options(args) == {"max_tries": 2}


def test_a_bad_config_through_main_is_one_line_and_exit_1(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(workdir, "[[sender]]\nname = 'a'\npath = '/a'\nlease = 'long'\n")
    assert main(["serve", "--config", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rc.toml: sender.a.lease" in err
    assert "Traceback" not in err


# --- a real serve --config, over HTTP ----------------------------------------------------------


@contextlib.contextmanager
def _serve(workdir: Path, *args: str) -> Iterator[tuple[str, list[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port), *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}", lines
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        text = output.decode(errors="replace")
        lines.extend(text.splitlines())
        assert "Exception in ASGI application" not in text, text
        assert PROD not in text
        assert STAGING not in text


def test_serve_config_takes_two_senders_each_recorded_once_and_run_by_its_handler(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{workdir}/senders.db"
    config = _write(
        workdir,
        f"""
        store = "{store}"
        log_format = "text"
        poll_interval = 0.05

        [[sender]]
        name = "prod"
        path = "{PROD_PATH}"
        secrets_env = "PROD_SECRETS"
        handler = "senders_handlers:prod"

        [[sender]]
        name = "staging"
        path = "{STAGING_PATH}"
        secrets_env = "STAGING_SECRETS"
        handler = "senders_handlers:staging"
        mode = "inbox"
        """,
        mode=0o644,  # no secret in it
    )
    bodies = [_body(seed) for seed in range(3)]
    with _serve(workdir, "--config", config) as (url, lines), httpx.Client(base_url=url) as client:
        answers = []
        for body in bodies:
            for _ in range(2):  # each delivered twice
                answers.append(client.post(PROD_PATH, content=body, headers=_headers(body, PROD)))
                answers.append(
                    client.post(STAGING_PATH, content=body, headers=_headers(body, STAGING))
                )
        forged = client.post(PROD_PATH, content=bodies[0], headers=_headers(bodies[0], STAGING))
        ready = client.get("/readyz")
        log = workdir / "senders.log"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 6:
                break
            time.sleep(0.05)
    assert {answer.status_code for answer in answers} == {200}
    statuses = [answer.json()["status"] for answer in answers]
    # Per body: prod (sync) twice, staging (inbox) twice, interleaved.
    assert statuses[0::4] == ["processed"] * 3
    assert statuses[2::4] == ["duplicate"] * 3
    assert statuses[1::4] == ["recorded"] * 3
    assert set(statuses[3::4]) <= {"recorded", "duplicate"}
    assert forged.status_code == 401
    assert ready.json() == {"status": "ready"}
    runs = log.read_text().splitlines()
    assert len(runs) == 6
    assert len(set(runs)) == 6  # each callback run once
    for line in runs:
        who, key = line.split(" ")
        assert sender_of(key) == who
    banner = next(line for line in lines if line.startswith("runflow-callbacks serve:"))
    assert "prod /callbacks/prod (sync; 2 secret(s))" in banner
    assert "staging /callbacks/staging (inbox; 1 secret(s))" in banner

    capsys.readouterr()
    assert main(["inbox", "stats", "--json", "--store", store]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)
    assert (stats["received"], stats["processed"], stats["duplicates"]) == (6, 6, 6)


def test_serve_in_thread_runs_the_router_lifespan_worker() -> None:
    recorder = Recorder()
    app = _router_app(
        open_store("memory://"), recorder, inbox=True, poll_interval=timedelta(seconds=0.05)
    )
    body = _body()
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        answer = client.post(STAGING_PATH, content=body, headers=_headers(body, STAGING))
        deadline = time.monotonic() + 10
        while not recorder.runs["staging"] and time.monotonic() < deadline:
            time.sleep(0.02)
    assert answer.json()["status"] == "recorded"
    assert len(recorder.runs["staging"]) == 1
