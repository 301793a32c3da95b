#!/usr/bin/env python3
"""Project tasks, runnable on a fresh clone with nothing but ``python3``.

    python3 dev.py demo    # the receiver at work on SQLite (see README)
    python3 dev.py test    # the whole test suite
    python3 dev.py lint    # ruff (lint + format check) and mypy --strict
    python3 dev.py bench   # the benchmarks in bench/, results printed as tables

Each task creates ``.venv`` on first use and installs the package with its extras; the
installation is redone when ``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".runflow-callbacks-installed"


def _fingerprint(extras: str) -> str:
    data = (ROOT / "pyproject.toml").read_bytes() + extras.encode()
    return hashlib.sha256(data).hexdigest()


def bootstrap(extras: str = "dev") -> None:
    """Create the virtual environment and install the project (editable) once."""
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit("runflow-callbacks needs Python 3.10 or newer")
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    wanted = _fingerprint(extras)
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print(f"installing runflow-callbacks[{extras}] into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    for step in (["install", "--upgrade", "pip"], ["install", "-e", f".[{extras}]"]):
        if subprocess.run([*pip, *step], cwd=ROOT, check=False).returncode:
            sys.exit(f"dev.py: 'pip {' '.join(step)}' failed; see the output above")
    STAMP.write_text(wanted)


def run(*args: str) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT, check=False).returncode


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "help"
    rest = argv[1:]
    if task == "demo":
        bootstrap()
        return run("-m", "runflow_callbacks", "demo", *rest)
    if task == "test":
        bootstrap()
        return run("-m", "pytest", *rest)
    if task == "lint":
        bootstrap()
        for cmd in (
            ("-m", "ruff", "check", "."),
            ("-m", "ruff", "format", "--check", "."),
            ("-m", "mypy"),
        ):
            code = run(*cmd)
            if code:
                return code
        return 0
    if task == "bench":
        bootstrap("dev,bench")
        names = rest or sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))
        for name in names:
            code = run(str(ROOT / "bench" / name))
            if code:
                return code
        return 0
    print(__doc__)
    return 0 if task in {"help", "-h", "--help"} else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
