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
