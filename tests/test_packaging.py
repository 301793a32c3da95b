"""What the distribution declares: the license it ships, where it lives, which Pythons it runs on.

Read from ``pyproject.toml`` itself (building a wheel needs the build backend from the
network); hatchling copies every ``license-files`` entry into the wheel's
``.dist-info/licenses/`` and names it in ``License-File``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
REPOSITORY = "https://github.com/runflow-callbacks/runflow-callbacks"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="in the standard library from Python 3.11")
    with (ROOT / "pyproject.toml").open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def test_the_mit_license_is_shipped_in_the_wheel(project: dict[str, Any]) -> None:
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 runflow-callbacks contributors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_the_project_links_to_its_repository(project: dict[str, Any]) -> None:
    assert project["urls"] == {
        "Homepage": REPOSITORY,
        "Documentation": f"{REPOSITORY}#readme",
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
        "Issues": f"{REPOSITORY}/issues",
    }


def test_every_supported_python_has_its_classifier(project: dict[str, Any]) -> None:
    assert project["requires-python"] == ">=3.10"
    versions = [
        classifier.rsplit(" :: ", 1)[1]
        for classifier in project["classifiers"]
        if classifier.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
