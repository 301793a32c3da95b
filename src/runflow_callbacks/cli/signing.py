"""``runflow-callbacks sign`` and ``runflow-callbacks verify``: the signature by hand.

::

    runflow-callbacks sign --secret whsec_... body.json
    runflow-callbacks verify --secret whsec_old --secret whsec_new --signature 9f2c... body.json

Both read the body's exact bytes from FILE, or from stdin when FILE is ``-`` or absent.
``sign`` signs with the last of its secrets (the newest, during a rotation: old, then new) or
the one ``--sign-with`` names, as Runflow signs with its current secret only.
``verify`` exits 0 and names the secret that matched (by label, never by value), or exits 1
with the reason on stderr and, on a mismatch, a hint when the body looks rewritten.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

from runflow_callbacks.cli._common import (
    add_secret_options,
    add_signing_options,
    read_input,
    secrets_from_args,
    signing_secret,
)
from runflow_callbacks.errors import SignatureMismatchError

if TYPE_CHECKING:
    import argparse

__all__ = ["register", "run_sign", "run_verify"]

#: ``verifier.SIGNATURE_HEADER``, spelled out: importing the verifier to build the parser would
#: load cryptography's bindings for every command (``tests/test_imports.py`` keeps them equal).
_SIGNATURE_HEADER: Final = "Runflow-Signature"
_NO_HINT: Final = (
    "hint: no common rewrite of the body explains it; check that the secret is the one that "
    "signed this delivery (signing_secret_id in the delivery history)"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sign`` and ``verify`` to the command line."""
    sign_parser = subparsers.add_parser(
        "sign",
        help="print the Runflow-Signature of a body",
        description=(
            "Print the hex HMAC-SHA256 signature Runflow would send for FILE's bytes. Runflow "
            "signs with its current secret only: given several secrets (a rotation, old then "
            "new), sign uses the last one, or the one --sign-with names."
        ),
    )
    add_signing_options(sign_parser)
    _add_file_argument(sign_parser)
    sign_parser.set_defaults(func=run_sign)

    verify_parser = subparsers.add_parser(
        "verify",
        help="check a Runflow-Signature against a body",
        description=(
            "Check a Runflow-Signature against FILE's exact bytes. Exit 0 and name the secret "
            "that matched, or exit 1 with the reason (and a hint when the body looks rewritten)."
        ),
    )
    add_secret_options(verify_parser)
    verify_parser.add_argument(
        "--signature",
        required=True,
        metavar="HEX",
        help=f"the {_SIGNATURE_HEADER} header value (64 hex digits)",
    )
    _add_file_argument(verify_parser)
    verify_parser.set_defaults(func=run_verify)


def _add_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the body, read as raw bytes (default: stdin, also with '-')",
    )


def run_sign(args: argparse.Namespace) -> int:
    """Print the signature of the body with the last secret, or the one ``--sign-with`` names."""
    from runflow_callbacks.verifier import sign  # noqa: PLC0415 - loads cryptography

    secret = signing_secret(args)
    print(sign(read_input(args.file), secret))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify the body; name the matching secret, or explain the failure on stderr."""
    from runflow_callbacks.verifier import Verifier  # noqa: PLC0415 - loads cryptography

    secrets = secrets_from_args(args)
    body = read_input(args.file)
    try:
        secret = Verifier(secrets).verify(body, args.signature)
    except SignatureMismatchError as exc:
        print(f"runflow-callbacks verify: {exc}", file=sys.stderr)
        # Only a mismatch needs the hints, which import pydantic (through the wire format).
        from runflow_callbacks.diagnose import diagnose_mismatch  # noqa: PLC0415

        hint = diagnose_mismatch(body, args.signature, secrets)
        print(_NO_HINT if hint is None else f"hint: {hint}", file=sys.stderr)
        return 1
    print(f"valid: signed with secret {secret.name} ({len(body)} bytes)")
    return 0
