"""Every command, given a wrong argument, says so in one line: never a Python traceback.

Each case runs the real entry point (``python -m runflow_callbacks``) in a fresh interpreter,
in an empty directory and without any ``RUNFLOW_*`` variable. A usage error exits 2 with
argparse's ``usage:`` lines and one ``error:`` line; any other mistake exits 1 with exactly one
line on stderr, ``runflow-callbacks <command>: <what is wrong>``. Nothing reaches stdout, and
the password in the store URLs (``hunter2``) is never repeated.

A missing database driver is simulated by putting None in ``sys.modules`` under its name before
the entry point runs, which makes ``import redis`` (or ``psycopg``) fail as if the package were
not installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

SECRET = "whsec_cli_errors_0123456789abcdef"
PASSWORD = "hunter2"
NOWHERE = "http://127.0.0.1:1/callbacks/runflow"  # nothing is ever sent there
API = ("--api-key", "rf_cli_errors")
#: Runs the entry point after making the modules named in its first argument unimportable.
WITHOUT = (
    "import runpy, sys\n"
    "for name in sys.argv.pop(1).split(','):\n"
    "    sys.modules[name] = None\n"
    "runpy.run_module('runflow_callbacks', run_name='__main__', alter_sys=True)\n"
)


class Case(NamedTuple):
    argv: Sequence[str]
    code: int
    fragment: str
    env: Mapping[str, str] = {}
    without: Sequence[str] = ()


class Run(NamedTuple):
    code: int
    out: str
    err: str


def run_cli(
    cwd: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    without: Sequence[str] = (),
) -> Run:
    """``python -m runflow_callbacks *argv`` in ``cwd``, with no RUNFLOW_* variable of ours."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("RUNFLOW_")}
    launcher = ["-c", WITHOUT, ",".join(without)] if without else ["-m", "runflow_callbacks"]
    done = subprocess.run(
        [sys.executable, *launcher, *argv],
        cwd=cwd,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


CASES: dict[str, Case] = {
    # the command line itself
    "no command": Case([], 2, "the following arguments are required: COMMAND"),
    "an unknown command": Case(["nope"], 2, "invalid choice: 'nope'"),
    # sign
    "sign: an unreadable body": Case(
        ["sign", "--secret", SECRET, "missing.json"], 1, "cannot read"
    ),
    "sign: --sign-with a position out of range": Case(
        ["sign", "--secret", SECRET, "--sign-with", "3", "body.json"], 1, "--sign-with"
    ),
    "sign: an unknown flag": Case(["sign", "--secrets", SECRET], 2, "unrecognized arguments"),
    # verify
    "verify: no --signature": Case(["verify", "--secret", SECRET], 2, "--signature"),
    "verify: a short signature": Case(
        ["verify", "--secret", SECRET, "--signature", "ab", "body.json"], 1, "64 hex digits"
    ),
    # send
    "send: a URL with a broken host": Case(
        ["send", "http://[::1/cb", "--secret", SECRET], 1, "URL"
    ),
    "send: a URL with a port that is not a number": Case(
        ["send", "http://localhost:notaport/cb", "--secret", SECRET], 1, "port"
    ),
    "send: a timeout that is not a number": Case(
        ["send", NOWHERE, "--secret", SECRET, "--timeout", "nan"], 1, "--timeout"
    ),
    "send: an infinite timeout": Case(
        ["send", NOWHERE, "--secret", SECRET, "--timeout", "inf"], 1, "--timeout"
    ),
    "send: --unsigned with --sign-with": Case(
        ["send", NOWHERE, "--unsigned", "--sign-with", "0"], 1, "exclude each other"
    ),
    "send: an unknown event": Case(
        ["send", NOWHERE, "--secret", SECRET, "--event", "batch.exploded"], 2, "invalid choice"
    ),
    "send: --set without =": Case(
        ["send", NOWHERE, "--secret", SECRET, "--set", "batch_id"], 2, "argument --set"
    ),
    "send: --set with an empty field name": Case(
        ["send", NOWHERE, "--secret", SECRET, "--set", "output..total=3"], 2, "argument --set"
    ),
    "send: --set through a field that is not an object": Case(
        ["send", NOWHERE, "--secret", SECRET, "--set", "status.code=1"], 1, "not an object"
    ),
    "send: an unknown status for the event kind": Case(
        ["send", NOWHERE, "--secret", SECRET, "--event", "run.failed", "--status", "exploded"],
        1,
        "not a status of run callbacks",
    ),
    "send: a negative item count": Case(
        ["send", NOWHERE, "--secret", SECRET, "--items", "-1"], 2, "argument --items"
    ),
    "send: an item count that is not a number": Case(
        ["send", NOWHERE, "--secret", SECRET, "--items", "many"], 2, "argument --items"
    ),
    "send: --items for a run event": Case(
        ["send", NOWHERE, "--secret", SECRET, "--event", "run.failed", "--items", "2"],
        1,
        "--items counts a batch's items",
    ),
    "send: too few items for a partially succeeded batch": Case(
        ["send", NOWHERE, "--secret", SECRET, "--status", "partial_succeeded", "--items", "1"],
        1,
        "at least 2 items",
    ),
    "send: --again with nothing sent yet": Case(
        ["send", NOWHERE, "--secret", SECRET, "--again"],
        1,
        "--again: nothing sent yet",
        env={"XDG_CACHE_HOME": "/proc/no-such-dir/cache"},
    ),
    "send: --again with --set": Case(
        ["send", NOWHERE, "--secret", SECRET, "--again", "--set", "a=1"], 1, "--again excludes"
    ),
    "send: --file with --status": Case(
        ["send", NOWHERE, "--secret", SECRET, "--file", "body.json", "--status", "failed"],
        1,
        "--file excludes --status",
    ),
    # history and redeliver
    "history: neither --batch nor --run": Case(["history", *API], 2, "--batch --run"),
    "history: an API URL with a broken host": Case(
        ["history", "--batch", "b", "--api-url", "http://[::1", *API], 1, "--api-url"
    ),
    "history: an API URL that is not http": Case(
        ["history", "--batch", "b", "--api-url", "ftp://runflow", *API],
        1,
        "--api-url must start with http://",
    ),
    "redeliver: both --batch and --run": Case(
        ["redeliver", "--batch", "b", "--run", "r", *API], 2, "not allowed with"
    ),
    "redeliver: an API URL with a port that is not a number": Case(
        ["redeliver", "--run", "r", "--api-url", "http://localhost:notaport", *API],
        1,
        "--api-url",
    ),
    # fake-runflow
    "fake-runflow: no API key": Case(["fake-runflow"], 1, "--api-key"),
    "fake-runflow: an unknown log level": Case(
        ["fake-runflow", *API, "--log-level", "LOUD"], 2, "argument --log-level"
    ),
    "fake-runflow: a port above 65535": Case(
        ["fake-runflow", *API, "--port", "99999"], 2, "argument --port"
    ),
    "fake-runflow: a negative port": Case(
        ["fake-runflow", *API, "--port=-1"], 2, "argument --port"
    ),
    "fake-runflow: retry delays that are not numbers": Case(
        ["fake-runflow", *API, "--retry-delays", "soon"], 2, "argument --retry-delays"
    ),
    # serve (--port 0 everywhere, so that a regression cannot take a real port)
    "serve: a port above 65535": Case(["serve", "--port", "99999"], 2, "argument --port"),
    "serve: a negative port": Case(["serve", "--port=-1"], 2, "argument --port"),
    "serve: a Redis URL with a port that is not a number": Case(
        ["serve", "--port", "0", "--store", f"redis://:{PASSWORD}@localhost:notaport/0"],
        1,
        "notaport",
        env={"RUNFLOW_CALLBACK_SECRETS": SECRET},
    ),
    "serve: Redis without the redis package": Case(
        ["serve", "--port", "0", "--store", f"redis://:{PASSWORD}@localhost:6379/0"],
        1,
        "runflow-callbacks[redis]",
        env={"RUNFLOW_CALLBACK_SECRETS": SECRET},
        without=["redis"],
    ),
    "serve: PostgreSQL without the psycopg package": Case(
        ["serve", "--port", "0", "--store", f"postgresql://app:{PASSWORD}@localhost/app"],
        1,
        "runflow-callbacks[postgres]",
        env={"RUNFLOW_CALLBACK_SECRETS": SECRET},
        without=["psycopg"],
    ),
    "serve: an unknown store scheme": Case(
        ["serve", "--port", "0", "--store", f"mysql://app:{PASSWORD}@db/app"],
        1,
        "unknown store URL scheme",
        env={"RUNFLOW_CALLBACK_SECRETS": SECRET},
    ),
    "serve: a receiver variable that is not yes or no": Case(
        ["serve", "--port", "0", "--store", "memory://"],
        1,
        "RUNFLOW_CALLBACK_ALLOW_UNSIGNED",
        env={"RUNFLOW_CALLBACK_SECRETS": SECRET, "RUNFLOW_CALLBACK_ALLOW_UNSIGNED": "maybe"},
    ),
    # inbox list
    "inbox list: a Redis URL with a port that is not a number": Case(
        ["inbox", "list", "--store", f"redis://:{PASSWORD}@localhost:notaport/0"], 1, "notaport"
    ),
    "inbox list: Redis without the redis package": Case(
        ["inbox", "list", "--store", f"redis://:{PASSWORD}@localhost:6379/0"],
        1,
        "runflow-callbacks[redis]",
        without=["redis"],
    ),
    "inbox list: PostgreSQL without the psycopg package": Case(
        ["inbox", "list", "--store", f"postgres://app:{PASSWORD}@localhost/app"],
        1,
        "runflow-callbacks[postgres]",
        without=["psycopg"],
    ),
    "inbox list: a Redis server that is not there": Case(
        ["inbox", "list", "--store", f"redis://:{PASSWORD}@127.0.0.1:1/0"], 1, "Redis store"
    ),
    "inbox list: a Redis host that does not exist": Case(
        ["inbox", "list", "--store", f"redis://:{PASSWORD}@no-such-host.invalid:6379/0"],
        1,
        "Redis store",
    ),
    "inbox list: a SQLite file that does not exist": Case(
        ["inbox", "list", "--store", "sqlite:///missing.db"], 1, "does not exist"
    ),
    "inbox list: a limit of zero": Case(
        ["inbox", "list", "--store", "memory://", "--limit", "0"], 1, "--limit"
    ),
    "inbox list: an unknown state": Case(
        ["inbox", "list", "--store", "memory://", "--state", "lost"], 2, "argument --state"
    ),
    # inbox show
    "inbox show: no key": Case(["inbox", "show", "--store", "memory://"], 2, "KEY"),
    "inbox show: a SQLite file that does not exist": Case(
        ["inbox", "show", "batch:b:batch.succeeded", "--store", "sqlite:///missing.db"],
        1,
        "does not exist",
    ),
    "inbox show: an unknown key": Case(
        ["inbox", "show", "batch:b:batch.succeeded", "--store", "memory://"],
        1,
        "no callback is recorded",
    ),
    # inbox retry
    "inbox retry: nothing named": Case(["inbox", "retry", "--store", "memory://"], 1, "--all"),
    "inbox retry: --all of an unknown state": Case(
        ["inbox", "retry", "--all", "processed", "--store", "memory://"], 2, "argument --all"
    ),
    "inbox retry: a SQLite file that does not exist": Case(
        ["inbox", "retry", "--all", "failed", "--store", "sqlite:///missing.db"],
        1,
        "does not exist",
    ),
    "inbox retry: a handler that cannot be imported": Case(
        ["inbox", "retry", "k", "--store", "memory://", "--handler", "no_such_module:handle"],
        1,
        "--handler",
    ),
    # inbox prune
    "inbox prune: no --older-than": Case(
        ["inbox", "prune", "--store", "memory://"], 2, "--older-than"
    ),
    "inbox prune: a duration that is not one": Case(
        ["inbox", "prune", "--older-than", "a week", "--store", "memory://"], 2, "not a duration"
    ),
    "inbox prune: a state that is never pruned": Case(
        ["inbox", "prune", "--older-than", "7d", "--state", "failed", "--store", "memory://"],
        2,
        "argument --state",
    ),
    "inbox prune: tombstones kept shorter than the callbacks": Case(
        ["inbox", "prune", "--older-than", "7d", "--tombstones-older-than", "1d"],
        1,
        "--tombstones-older-than",
    ),
    "inbox prune: a SQLite file that does not exist": Case(
        ["inbox", "prune", "--older-than", "7d", "--store", "sqlite:///missing.db"],
        1,
        "does not exist",
    ),
    # inbox rejected
    "inbox rejected: an id that is not kept": Case(
        ["inbox", "rejected", "--show", "12", "--store", "memory://"], 1, "no rejected request"
    ),
    "inbox rejected: a limit that is not positive": Case(
        ["inbox", "rejected", "--limit", "0", "--store", "memory://"], 2, "positive"
    ),
    # inbox replay-rejected
    "inbox replay-rejected: nothing named": Case(
        ["inbox", "replay-rejected", "--secret", SECRET, "--store", "memory://"], 1, "--all"
    ),
    "inbox replay-rejected: no secret": Case(
        ["inbox", "replay-rejected", "--all", "--store", "memory://"], 1, "no callback secret"
    ),
    "inbox retry: a time that is not one": Case(
        ["inbox", "retry", "--since", "last week", "--store", "memory://"], 2, "not a time"
    ),
    # inbox stats
    "inbox stats: a PostgreSQL server that is not there": Case(
        ["inbox", "stats", "--store", f"postgresql://app:{PASSWORD}@127.0.0.1:1/app"],
        1,
        "PostgreSQL store",
    ),
    "inbox stats: a SQLite file that does not exist": Case(
        ["inbox", "stats", "--store", "sqlite:///missing.db"], 1, "does not exist"
    ),
    "inbox stats: a namespace SQL cannot use": Case(
        ["inbox", "stats", "--store", "memory://", "--namespace", "Drop Table"], 1, "namespace"
    ),
    # inbox web (--port 0 everywhere, so that a regression cannot take a real port)
    "inbox web: a port above 65535": Case(
        ["inbox", "web", "--port", "99999"], 2, "argument --port"
    ),
    "inbox web: a page size of zero": Case(
        ["inbox", "web", "--page-size", "0"], 2, "argument --page-size"
    ),
    "inbox web: another host than a loopback one without a token": Case(
        ["inbox", "web", "--host", "0.0.0.0", "--port", "0", "--store", "memory://"],
        1,
        "pass --token",
    ),
    "inbox web: a token too short": Case(
        ["inbox", "web", "--port", "0", "--store", "memory://"],
        1,
        "RUNFLOW_CALLBACK_WEB_TOKEN: the web token must be at least 16",
        env={"RUNFLOW_CALLBACK_WEB_TOKEN": PASSWORD},
    ),
    "inbox web: a handler without --allow-retry": Case(
        ["inbox", "web", "--port", "0", "--store", "memory://", "--handler", "app:handle"],
        1,
        "--allow-retry",
    ),
    "inbox web: a handler that cannot be imported": Case(
        [
            "inbox",
            "web",
            "--port",
            "0",
            "--store",
            "memory://",
            "--allow-retry",
            "--handler",
            "no_such_module:handle",
        ],
        1,
        "--handler",
    ),
    "inbox web: a SQLite file that does not exist": Case(
        ["inbox", "web", "--port", "0", "--store", "sqlite:///missing.db"], 1, "does not exist"
    ),
    "inbox web: a Redis URL with a port that is not a number": Case(
        ["inbox", "web", "--port", "0", "--store", f"redis://:{PASSWORD}@localhost:notaport/0"],
        1,
        "notaport",
    ),
    "inbox: no action": Case(["inbox"], 2, "ACTION"),
    # reconcile
    "reconcile: nothing to reconcile": Case(
        ["reconcile", "--store", "memory://"], 1, "at least one --batch or --run"
    ),
    "reconcile: a Redis URL with a port that is not a number": Case(
        ["reconcile", "--batch", "b", "--store", f"redis://:{PASSWORD}@h:notaport/0", *API],
        1,
        "notaport",
    ),
    "reconcile: an API URL with a broken host": Case(
        ["reconcile", "--batch", "b", "--store", "memory://", "--api-url", "http://[::1", *API],
        1,
        "--api-url",
    ),
    # demo
    "demo: a workdir that cannot be created": Case(
        ["demo", "--workdir", "/proc/no-such-dir/demo"], 1, "--workdir"
    ),
    "demo: a workdir that is a file": Case(["demo", "--workdir", "body.json"], 1, "--workdir"),
    "demo: no batches": Case(["demo", "--batches", "0"], 1, "--batches"),
    "demo: batches that are not a number": Case(
        ["demo", "--batches", "many"], 2, "argument --batches"
    ),
}


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "body.json").write_bytes(b'{"event": "batch.succeeded"}')
    return tmp_path


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_wrong_argument_is_one_line_on_stderr_and_never_a_traceback(
    cwd: Path, case: Case
) -> None:
    result = run_cli(cwd, case.argv, env=case.env, without=case.without)
    assert "Traceback" not in result.err
    assert result.out == ""
    assert (result.code, case.fragment in result.err) == (case.code, True), result.err
    assert PASSWORD not in result.err
    lines = result.err.splitlines()
    if case.code == 2:  # argparse: the usage, then one error line
        assert lines[0].startswith("usage: runflow-callbacks")
        assert ": error: " in lines[-1]
        assert case.fragment in lines[-1]
    else:
        assert len(lines) == 1, result.err
        assert lines[0].startswith("runflow-callbacks ")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_and_inbox_action_has_a_wrong_argument_in_the_catalogue() -> None:
    from runflow_callbacks.cli import build_parser

    commands = _subcommands(build_parser())
    wanted = {f"inbox {action}" for action in _subcommands(commands["inbox"])}
    wanted |= set(commands) - {"inbox"}
    named = {" ".join(case.argv[:2]) for case in CASES.values() if case.argv[:1] == ["inbox"]}
    named |= {case.argv[0] for case in CASES.values() if case.argv}
    assert wanted <= named


def test_a_store_that_does_not_exist_is_not_created_by_the_read_only_commands(
    cwd: Path,
) -> None:
    store = "sqlite:///missing.db"
    for argv in (
        ["inbox", "list", "--store", store],
        ["inbox", "show", "batch:b:batch.succeeded", "--store", store],
        ["inbox", "stats", "--store", store],
        ["inbox", "retry", "batch:b:batch.succeeded", "--store", store],
    ):
        result = run_cli(cwd, argv)
        assert (result.code, result.out) == (1, "")
        assert result.err.count("\n") == 1
        assert "does not exist" in result.err
    assert sorted(path.name for path in cwd.iterdir()) == ["body.json"]


def test_a_bad_receiver_variable_breaks_serve_only(cwd: Path) -> None:
    env = {"RUNFLOW_CALLBACK_ALLOW_UNSIGNED": "maybe"}
    result = run_cli(cwd, ["sign", "--secret", SECRET, "body.json"], env=env)
    assert (result.code, result.err) == (0, "")
    assert len(result.out.strip()) == 64


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback(cwd: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runflow_callbacks", "demo", "--signatures-only"],
            cwd=cwd,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 1


def test_a_store_error_message_on_several_lines_is_printed_on_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runflow_callbacks.cli import inbox as inbox_command
    from runflow_callbacks.cli import main
    from runflow_callbacks.errors import StoreError

    def unreachable(_args: object, _action: object, **_options: object) -> object:
        raise StoreError("connection failed\n\tIs the server running on that host?")

    monkeypatch.setattr(inbox_command, "run_with_store", unreachable)
    assert main(["inbox", "stats", "--store", "memory://"]) == 1
    assert capsys.readouterr().err == (
        "runflow-callbacks inbox: connection failed Is the server running on that host?\n"
    )


def test_a_store_url_the_driver_refuses_is_reported_with_its_password_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runflow_callbacks import stores
    from runflow_callbacks.cli import main

    url = f"redis://:{PASSWORD}@cache:6379/0"

    def refuse(given: str, **_options: object) -> object:
        raise ValueError(f"cannot connect with {given}")

    monkeypatch.setattr(stores, "open_store", refuse)
    assert main(["inbox", "stats", "--store", url]) == 1
    assert capsys.readouterr().err == (
        "runflow-callbacks inbox: unusable store URL redis://:***@cache:6379/0: "
        "cannot connect with redis://:***@cache:6379/0\n"
    )


def test_the_command_table_names_what_each_module_registers() -> None:
    import argparse
    import importlib

    from runflow_callbacks.cli import _COMMAND_MODULES

    for module, commands in _COMMAND_MODULES.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == commands, module


def test_a_command_is_parsed_the_same_with_only_its_own_module_built() -> None:
    from runflow_callbacks.cli import build_parser

    argv = ["inbox", "list", "--store", "memory://", "--json"]
    alone = vars(build_parser(argv).parse_args(argv))
    everything = vars(build_parser().parse_args(argv))
    assert alone.keys() == everything.keys()
    assert {k: v for k, v in alone.items() if k != "func"} == {
        k: v for k, v in everything.items() if k != "func"
    }
