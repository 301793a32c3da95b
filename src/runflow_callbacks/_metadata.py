"""The installed distribution's version, read from its metadata on demand.

``runflow_callbacks.__version__`` and ``runflow-callbacks --version`` both come from here, so
the version is written once, in ``pyproject.toml``. Importing this module is free:
:mod:`importlib.metadata` (which costs more than the whole of ``runflow-callbacks sign``) is
imported only when :func:`distribution_version` is called.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs more than --version itself; checkers see True
if TYPE_CHECKING:
    from typing import Final

__all__ = ["DISTRIBUTION", "UNKNOWN_VERSION", "distribution_version"]

#: The name the package is installed under (``pip install runflow-callbacks``).
DISTRIBUTION: Final = "runflow-callbacks"
#: The version reported when the package runs without being installed (a bare source tree on
#: ``sys.path``): a valid PEP 440 version that sorts below every release and says "unknown".
UNKNOWN_VERSION: Final = "0+unknown"


def distribution_version() -> str:
    """The version of the installed ``runflow-callbacks``, else :data:`UNKNOWN_VERSION`.

    The ``Version:`` line of the distribution's ``METADATA`` file, found on ``sys.path`` the
    way :mod:`importlib.metadata` finds it; that module itself (and the e-mail parser it
    loads) costs more than the rest of ``runflow-callbacks --version``, so it is used only
    when no ``.dist-info`` directory is found (an egg, a zip).
    """
    found = _version_from_dist_info()
    if found is not None:
        return found
    import importlib.metadata  # noqa: PLC0415 - costly; the rare fallback only

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def _version_from_dist_info() -> str | None:
    import os  # noqa: PLC0415 - only when the version is asked for
    import sys  # noqa: PLC0415

    prefix = DISTRIBUTION.replace("-", "_") + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith(".dist-info"):
                version = _metadata_version(os.path.join(entry or ".", name, "METADATA"))
                if version is not None:
                    return version
    return None


def _metadata_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as metadata:
            for line in metadata:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():
                    return None  # the headers ended without a version
    except OSError:
        return None
    return None
