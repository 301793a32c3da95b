"""Every option is declared once (``ReceiverOptions``) and reaches every front door."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks import CallbackMiddleware, CallbackReceiver
from runflow_callbacks.app import create_app
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.options import (
    READER_OPTIONS,
    ExponentialBackoff,
    ReaderArgs,
    ReceiverArgs,
    ReceiverOptions,
)
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.stores import open_store

if TYPE_CHECKING:
    from runflow_callbacks.models import CallbackPayload

SECRET = "whsec_options_0123456789"
NAMES = [item.name for item in dataclasses.fields(ReceiverOptions)]


def _fixed_clock() -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.utc)


def _key(payload: CallbackPayload, body: bytes) -> str:
    return "custom"


#: A value other than the default for every option.
CHANGED: dict[str, Any] = {
    "max_body_bytes": 1024,
    "allow_unsigned": True,
    "signature_header": "X-Webhook-Signature",
    "body_timeout": timedelta(seconds=3),
    "max_unverified_bytes": 4096,
    "clock": _fixed_clock,
    "mode": "inbox",
    "lease": timedelta(seconds=42),
    "handler_timeout": timedelta(seconds=7),
    "max_tries": 3,
    "backoff": ExponentialBackoff(base=timedelta(seconds=5)),
    "key": _key,
    "poll_interval": timedelta(seconds=9),
    "worker_batch_size": 4,
}


def test_every_option_has_a_changed_value_here_that_differs_from_its_default() -> None:
    assert sorted(CHANGED) == sorted(NAMES)
    defaults = ReceiverOptions()
    for name in NAMES:
        assert getattr(defaults, name) != CHANGED[name], name


def test_the_keyword_types_mirror_the_one_declaration() -> None:
    declared = {item.name: item.type for item in dataclasses.fields(ReceiverOptions)}
    assert ReceiverArgs.__annotations__.keys() == declared.keys()
    for name, annotation in ReceiverArgs.__annotations__.items():
        assert getattr(annotation, "__forward_arg__", annotation) == declared[name], name
    assert set(ReaderArgs.__annotations__) == READER_OPTIONS


@pytest.mark.parametrize("name", NAMES)
async def test_every_option_reaches_the_receiver_the_engine_and_create_app(name: str) -> None:
    value = CHANGED[name]
    store = open_store("memory://")
    receiver = CallbackReceiver(secrets=SECRET, store=store, **{name: value})
    assert getattr(receiver.options, name) == value
    assert receiver.processor is not None
    assert getattr(receiver.processor.options, name) == value
    processor = CallbackProcessor(store, **{name: value})
    assert getattr(processor.options, name) == value
    app = create_app(secrets=SECRET, store=store, handler=lambda context: None, **{name: value})
    assert getattr(app.state.receiver.options, name) == value
    given = create_app(secrets=SECRET, store=store, options=ReceiverOptions(**{name: value}))
    assert getattr(given.state.receiver.options, name) == value


@pytest.mark.parametrize("name", sorted(READER_OPTIONS))
def test_every_reader_option_reaches_the_middleware_and_the_dependency(name: str) -> None:
    from runflow_callbacks.fastapi import CallbackDependency

    value = CHANGED[name]
    middleware = CallbackMiddleware(lambda *_: None, secrets=SECRET, **{name: value})  # type: ignore[arg-type]
    assert getattr(middleware.options, name) == value
    dependency = CallbackDependency(secrets=SECRET, **{name: value})
    assert getattr(dependency.options, name) == value


@pytest.mark.parametrize("name", sorted(set(NAMES) - READER_OPTIONS))
def test_a_front_door_that_runs_no_handler_refuses_engine_options(name: str) -> None:
    with pytest.raises(ConfigurationError, match="runs no handler"):
        CallbackMiddleware(lambda *_: None, secrets=SECRET, **{name: CHANGED[name]})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_body_bytes": True}, "max_body_bytes"),
        ({"allow_unsigned": "yes"}, "allow_unsigned"),
        ({"mode": "later"}, "mode"),
        ({"lease": timedelta(0)}, "lease"),
        ({"lease": 30}, "lease"),
        ({"handler_timeout": timedelta(seconds=-1)}, "handler_timeout"),
        ({"max_tries": 0}, "max_tries"),
        ({"poll_interval": timedelta(0)}, "poll_interval"),
        ({"worker_batch_size": 0}, "worker_batch_size"),
        ({"key": "not callable"}, "key"),
        ({"clock": None}, "clock"),
    ],
)
def test_a_bad_option_is_a_configuration_error_naming_it(
    changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ReceiverOptions(**changes)
    with pytest.raises(ConfigurationError, match=match):
        CallbackReceiver(secrets=SECRET, **changes)


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        CallbackReceiver(secrets=SECRET, lease_seconds=3)  # type: ignore[call-arg]


def test_none_for_the_optional_limits_means_no_limit() -> None:
    options = ReceiverOptions(handler_timeout=None, max_tries=None)
    assert (options.handler_timeout, options.max_tries) == (None, None)


# --- serve: a flag and a variable per option ------------------------------------------------

#: What to type on the command line for each option, and what the library should get.
TYPED: dict[str, tuple[list[str], str, Any]] = {
    "max_body_bytes": (["1024"], "1024", 1024),
    "allow_unsigned": ([], "true", True),
    "signature_header": (["X-Webhook-Signature"], "X-Webhook-Signature", "X-Webhook-Signature"),
    "body_timeout": (["3"], "3", timedelta(seconds=3)),
    "max_unverified_bytes": (["4096"], "4096", 4096),
    "mode": (["inbox"], "inbox", "inbox"),
    "lease": (["42"], "42", timedelta(seconds=42)),
    "handler_timeout": (["7.5"], "7.5", timedelta(seconds=7.5)),
    "max_tries": (["3"], "3", 3),
    "backoff": (
        ["5:60"],
        "5:60",
        ExponentialBackoff(base=timedelta(seconds=5), cap=timedelta(seconds=60), jitter=0.1),
    ),
    "key": (["test_options:_key"], "test_options:_key", _key),
    "poll_interval": (["9"], "9", timedelta(seconds=9)),
    "worker_batch_size": (["4"], "4", 4),
}
FLAGGED = sorted(set(NAMES) - {"clock"})


def _serve_options(argv: list[str]) -> dict[str, Any]:
    from runflow_callbacks.cli import build_parser
    from runflow_callbacks.cli._options import options_from_args

    return options_from_args(build_parser().parse_args(["serve", *argv]))


def test_every_option_but_the_clock_has_a_serve_flag() -> None:
    from runflow_callbacks.cli._options import option_flags

    assert sorted(option_flags()) == FLAGGED
    assert sorted(TYPED) == FLAGGED


@pytest.mark.parametrize("name", FLAGGED)
def test_every_option_reaches_serve_by_its_flag(name: str) -> None:
    from runflow_callbacks.cli._options import option_flags

    argv, _, expected = TYPED[name]
    options = _serve_options([option_flags()[name], *argv])
    assert options == {name: expected}
    app = create_app(secrets=SECRET, store="memory://", handler=lambda context: None, **options)
    assert getattr(app.state.receiver.options, name) == expected


@pytest.mark.parametrize("name", FLAGGED)
def test_every_option_reaches_serve_by_its_environment_variable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runflow_callbacks.cli._options import env_name

    _, text, expected = TYPED[name]
    monkeypatch.setenv(env_name(name), text)
    assert _serve_options([]) == {name: expected}


def test_serve_without_option_flags_keeps_the_library_defaults() -> None:
    assert _serve_options([]) == {}


def test_zero_means_no_limit_for_the_timeout_and_the_tries() -> None:
    argv = ["--handler-timeout", "0", "--max-tries", "0", "--body-timeout", "0"]
    options = _serve_options([*argv, "--max-unverified-bytes", "0"])
    assert options == dict.fromkeys(
        ["handler_timeout", "max_tries", "body_timeout", "max_unverified_bytes"]
    )


def test_inbox_is_short_for_mode_inbox() -> None:
    assert _serve_options(["--inbox"]) == {"mode": "inbox"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--lease-seconds", "0"],
        ["--lease-seconds", "soon"],
        ["--handler-timeout", "-1"],
        ["--max-tries", "-1"],
        ["--worker-batch-size", "0"],
        ["--backoff-seconds", "10:5"],
        ["--key", "no_colon"],
        ["--mode", "later"],
    ],
)
def test_a_bad_option_flag_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _serve_options(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
