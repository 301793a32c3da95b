"""``runflow-callbacks sign`` / ``verify`` / ``demo``: exit statuses, messages, hints, no leaks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from runflow_callbacks.cli import main
from runflow_callbacks.cli._common import read_input

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

VECTOR = json.loads((Path(__file__).parent / "vectors" / "spec_known_answer.json").read_text())
SECRET: str = VECTOR["secret"]
BODY: bytes = VECTOR["body"].encode()
SIGNATURE: str = VECTOR["signature"]
OTHERS = ("whsec_other_aaaaaaaaaaaaaaaa", "whsec_third_bbbbbbbbbbbbbbbb")


class Run(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    monkeypatch.delenv("RUNFLOW_CALLBACK_SECRETS", raising=False)

    def run(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        for value in (SECRET, *OTHERS):
            assert value not in captured.out + captured.err
        return Run(code, captured.out, captured.err)

    return run


def test_sign_prints_the_known_answer(cli: Callable[..., Run], body_file: Path) -> None:
    assert cli("sign", "--secret", SECRET, str(body_file)) == Run(0, SIGNATURE + "\n", "")


def test_sign_reads_stdin_through_the_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runflow_callbacks", "sign", "--secret", SECRET, "-"],
        input=BODY,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stdout.decode().strip()) == (0, SIGNATURE)


def test_read_input_keeps_every_byte_of_stdin() -> None:
    raw = b'{"a": 1}\r\n\xff'
    assert read_input("-", stdin=io.BytesIO(raw)) == raw
    assert read_input(None, stdin=io.BytesIO(raw)) == raw


def test_sign_during_a_rotation_signs_with_the_last_secret_of_the_environment(
    cli: Callable[..., Run], body_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f"{OTHERS[0]},{SECRET}")  # old,new
    assert cli("sign", str(body_file)) == Run(0, SIGNATURE + "\n", "")


def test_sign_with_several_secret_flags_signs_with_the_last(
    cli: Callable[..., Run], body_file: Path
) -> None:
    argv = ["--secret", OTHERS[0], "--secret", OTHERS[1], "--secret", SECRET]
    assert cli("sign", *argv, str(body_file)) == Run(0, SIGNATURE + "\n", "")


@pytest.mark.parametrize("choice", ["0", "env 0"])
def test_sign_with_picks_another_secret_by_position_or_label(
    cli: Callable[..., Run], body_file: Path, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f"{SECRET},{OTHERS[0]}")
    assert cli("sign", "--sign-with", choice, str(body_file)) == Run(0, SIGNATURE + "\n", "")


def test_sign_with_names_a_secret_flag_by_its_label(
    cli: Callable[..., Run], body_file: Path
) -> None:
    argv = ["--secret", OTHERS[0], "--secret", SECRET, "--secret", OTHERS[1]]
    result = cli("sign", *argv, "--sign-with=--secret 1", str(body_file))
    assert result == Run(0, SIGNATURE + "\n", "")


@pytest.mark.parametrize("choice", ["2", "-1", "env 2", "--secret 0", "newest", SECRET, ""])
def test_a_sign_with_naming_no_secret_is_one_line_listing_the_choices(
    cli: Callable[..., Run], body_file: Path, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f"{OTHERS[0]},{SECRET}")
    result = cli("sign", "--sign-with", choice, str(body_file))
    assert (result.code, result.out) == (1, "")
    assert len(result.err.splitlines()) == 1
    assert result.err.startswith("runflow-callbacks sign: --sign-with ")
    assert "a position (0 or 1) or a label (env 0, env 1)" in result.err  # never the value


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["sign", "send"])
def test_the_signing_commands_say_they_sign_with_the_last_secret(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(command, capsys)
    assert "the last one signs unless --sign-with names another" in text
    assert "--sign-with SECRET" in text
    assert "try several" not in text


def test_verify_says_each_secret_is_tried(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("verify", capsys)
    assert "each is tried in turn" in text
    assert "--sign-with" not in text


def test_verify_reports_the_second_of_three_secrets(
    cli: Callable[..., Run], body_file: Path
) -> None:
    argv = ["--secret", OTHERS[0], "--secret", SECRET, "--secret", OTHERS[1]]
    result = cli("verify", *argv, "--signature", SIGNATURE, str(body_file))
    assert result.code == 0
    assert "secret --secret 1" in result.out


def test_verify_accepts_uppercase_and_whitespace(cli: Callable[..., Run], body_file: Path) -> None:
    signature = f"  {SIGNATURE.upper()}\n"
    assert cli("verify", "--secret", SECRET, "--signature", signature, str(body_file)).code == 0


def test_verify_reads_secrets_from_the_environment(
    cli: Callable[..., Run], body_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f"{OTHERS[0]}, {SECRET}")
    result = cli("verify", "--signature", SIGNATURE, str(body_file))
    assert result.code == 0
    assert "secret env 1" in result.out


def test_flags_take_precedence_over_the_environment(
    cli: Callable[..., Run], body_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", SECRET)
    result = cli("verify", "--secret", OTHERS[0], "--signature", SIGNATURE, str(body_file))
    assert result.code == 1
    assert "1 secret tried" in result.err


class Tampered(NamedTuple):
    body: bytes
    secret: str
    hint: str


TAMPERED = {
    "trailing newline": Tampered(BODY + b"\n", SECRET, "trailing newline is removed"),
    "Z timestamps": Tampered(BODY.replace(b"+00:00", b"Z"), SECRET, "`Z` timestamps"),
    "compact JSON": Tampered(
        json.dumps(json.loads(BODY), separators=(",", ":")).encode(), SECRET, "re-serialized"
    ),
    "secret without prefix": Tampered(BODY, SECRET.removeprefix("whsec_"), "'whsec_'"),
    "wrong secret": Tampered(BODY, OTHERS[0], "no common rewrite"),
}


@pytest.mark.parametrize("case", TAMPERED.values(), ids=TAMPERED.keys())
def test_verify_mismatch_explains_itself(
    cli: Callable[..., Run], tmp_path: Path, case: Tampered
) -> None:
    path = tmp_path / "tampered.json"
    path.write_bytes(case.body)
    result = cli("verify", "--secret", case.secret, "--signature", SIGNATURE, str(path))
    assert result.code == 1
    assert result.out == ""
    first, hint = result.err.splitlines()
    assert first == (
        "runflow-callbacks verify: Runflow-Signature does not match the body under any of "
        "1 secret tried"
    )
    assert hint.startswith("hint: ")
    assert case.hint in hint


BAD_RUNS: dict[str, tuple[Sequence[str], str]] = {
    "prefixed signature": (
        ["verify", "--secret", SECRET, "--signature", f"sha256={SIGNATURE}"],
        "drop the 'sha256=' style prefix",
    ),
    "short signature": (
        ["verify", "--secret", SECRET, "--signature", SIGNATURE[:40]],
        "64 hex digits, got 40",
    ),
    "empty signature": (["verify", "--secret", SECRET, "--signature", " "], "missing or empty"),
    "no secret": (["verify", "--signature", SIGNATURE], "pass --secret or set"),
    "empty secret": (["sign", "--secret", ""], "--secret 0: a callback secret must not be empty"),
    "secret with newline": (["sign", "--secret", SECRET + "\n"], "trailing newline"),
}


@pytest.mark.parametrize(("argv", "message"), BAD_RUNS.values(), ids=BAD_RUNS.keys())
def test_bad_input_is_one_line_on_stderr(
    cli: Callable[..., Run], body_file: Path, argv: Sequence[str], message: str
) -> None:
    result = cli(*argv, str(body_file))
    assert result.code == 1
    assert result.out == ""
    assert len(result.err.splitlines()) == 1
    assert message in result.err


def test_unreadable_file_is_reported(cli: Callable[..., Run], tmp_path: Path) -> None:
    result = cli("sign", "--secret", SECRET, str(tmp_path / "missing.json"))
    assert result.code == 1
    assert "cannot read" in result.err
    assert "No such file" in result.err


def test_help_mentions_the_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["verify", "--help"])
    assert exited.value.code == 0
    assert "RUNFLOW_CALLBACK_SECRETS" in capsys.readouterr().out


def test_demo_verifies_then_rejects_rewritten_copies(cli: Callable[..., Run]) -> None:
    result = cli("demo", "--signatures-only")
    assert result.code == 0
    assert "verified with secret 'new' (position 1)" in result.out
    assert result.out.count("rejected (signature_mismatch)") == 2
    assert "rejected (malformed_signature)" in result.out
    assert "hint: the signature matches once `Z` timestamps" in result.out
    assert "hint: the signature matches once the JSON is written" in result.out
    assert "whsec_demo_new_8c3e5a7b9d1f2460" not in result.out
