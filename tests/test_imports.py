"""What importing runflow-callbacks loads: the light entry points stay light, every name resolves.

The verifier, the pytest plugin and the command line's parser must not pull in the web stack
(pydantic, httpx, starlette, anyio): each check runs in a fresh interpreter, because this test
session has long imported all of them. Nothing here measures time (``bench/bench_startup.py``
does); only which modules get loaded.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import runflow_callbacks
import runflow_callbacks.testing
from runflow_callbacks import _events, _metadata, verifier
from runflow_callbacks.cli import signing

if TYPE_CHECKING:
    from types import ModuleType

#: Never loaded by the light entry points.
WEB_STACK = ("pydantic", "httpx", "starlette", "anyio")
SRC = Path(runflow_callbacks.__file__).parent
SECRET = "whsec_test_0123456789abcdef"


def loaded_by(code: str, *, watch: tuple[str, ...] = WEB_STACK) -> set[str]:
    """Which of ``watch`` a fresh interpreter has in ``sys.modules`` after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps(sorted(set({watch!r}) & set(sys.modules))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return set(loaded)


@pytest.mark.parametrize(
    "code",
    [
        "import runflow_callbacks.verifier",
        "from runflow_callbacks import sign, verify",
        "from runflow_callbacks import sign, verify, Verifier, Secret, is_valid",
        "import runflow_callbacks",
        "import runflow_callbacks.testing.plugin",
    ],
)
def test_the_light_entry_points_load_no_web_stack(code: str) -> None:
    assert loaded_by(code) == set()


def test_building_the_command_line_loads_no_web_stack_nor_uvicorn() -> None:
    code = "from runflow_callbacks.cli import build_parser\nbuild_parser()"
    assert loaded_by(code, watch=(*WEB_STACK, "uvicorn")) == set()


def test_building_the_command_line_imports_neither_the_stores_nor_the_verifier() -> None:
    # Every command builds the whole parser, ``--version`` included: the stores package and
    # cryptography's bindings (through the verifier) are for the commands that use them.
    code = "from runflow_callbacks.cli import build_parser\nbuild_parser()"
    watch = ("runflow_callbacks.stores", "runflow_callbacks.verifier")
    assert loaded_by(code, watch=watch) == set()


def test_sign_runs_without_the_web_stack(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    code = (
        "import contextlib, io\n"
        "from runflow_callbacks.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['sign', '--secret', {SECRET!r}, {str(body)!r}]) == 0"
    )
    assert loaded_by(code) == set()


def test_version_flag_prints_the_installed_version_without_the_web_stack() -> None:
    code = (
        "import contextlib, io\n"
        "from runflow_callbacks.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--version'])\n"
        "assert out.getvalue() == 'runflow-callbacks "
        f"{importlib.metadata.version('runflow-callbacks')}\\n', out.getvalue()"
    )
    assert loaded_by(code) == set()


def test_version_is_the_installed_distributions() -> None:
    assert runflow_callbacks.__version__ == importlib.metadata.version("runflow-callbacks")


def test_version_says_unknown_when_the_distribution_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(_metadata, "_version_from_dist_info", lambda: None)
    assert _metadata.distribution_version() == _metadata.UNKNOWN_VERSION == "0+unknown"


def test_the_version_read_from_the_dist_info_is_what_importlib_metadata_says() -> None:
    assert _metadata._version_from_dist_info() == importlib.metadata.version("runflow-callbacks")


def test_a_dist_info_without_a_version_line_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "runflow_callbacks-9.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.4\nName: runflow-callbacks\n\nbody\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert _metadata._version_from_dist_info() is None


@pytest.mark.parametrize("package", [runflow_callbacks, runflow_callbacks.testing])
def test_every_public_name_resolves(package: ModuleType) -> None:
    missing = [name for name in package.__all__ if getattr(package, name, None) is None]
    assert missing == []


@pytest.mark.parametrize("package", ["runflow_callbacks", "runflow_callbacks.testing"])
def test_dir_lists_every_public_name_before_any_is_imported(package: str) -> None:
    code = f"import json, {package} as p\nprint(json.dumps([dir(p), p.__all__]))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    listed, public = json.loads(result.stdout)
    assert set(public) <= set(listed)


@pytest.mark.parametrize("package", [runflow_callbacks, runflow_callbacks.testing])
def test_an_unknown_name_is_an_attribute_error(package: ModuleType) -> None:
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = package.no_such_name
    assert not hasattr(package, "no_such_name")


def _type_checking_imports(module: ModuleType) -> dict[str, str]:
    """``name -> module`` of the imports in the ``if TYPE_CHECKING:`` block of ``module``."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.module is not None:
                    found.update({alias.name: statement.module for alias in statement.names})
    return found


@pytest.mark.parametrize("package", [runflow_callbacks, runflow_callbacks.testing])
def test_the_lazy_table_the_type_checking_imports_and_all_agree(package: ModuleType) -> None:
    table: dict[str, str] = package._EXPORTS
    assert _type_checking_imports(package) == table
    assert set(table) | ({"__version__"} & set(package.__all__)) == set(package.__all__)
    for name, module in table.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name)


def _imported_modules(node: ast.AST) -> list[str]:
    """The dotted names an import statement brings in (``from a import b`` gives ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module is not None:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def test_the_library_never_imports_the_command_line() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "cli" or relative.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            offenders += [
                f"{relative}: {name}"
                for name in _imported_modules(node)
                if name == "runflow_callbacks.cli" or name.startswith("runflow_callbacks.cli.")
            ]
    assert offenders == []


def test_no_command_module_imports_another_ones_private_helper() -> None:
    cli = SRC / "cli"
    offenders = []
    for path in sorted(cli.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if not node.module.startswith("runflow_callbacks"):
                continue
            for alias in node.names:
                # A private module (``cli._common``, ``cli._demo_run``) is fine to import from;
                # a private name taken out of another module is not.
                is_module = (
                    SRC.parent / node.module.replace(".", "/") / f"{alias.name}.py"
                ).exists()
                if alias.name.startswith("_") and not is_module:
                    offenders.append(f"{path.name}: {node.module}.{alias.name}")
    assert offenders == []


def test_verify_help_names_the_verifiers_header() -> None:
    assert signing._SIGNATURE_HEADER == verifier.SIGNATURE_HEADER


def test_send_offers_every_event_the_models_and_the_kit_know() -> None:
    from runflow_callbacks import models
    from runflow_callbacks.testing import EVENTS

    assert _events.EVENTS == EVENTS == (*models.RUN_EVENTS, *models.BATCH_EVENTS)
