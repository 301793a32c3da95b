"""The installed distribution's version, read from its metadata on demand.

``runflow_callbacks.__version__`` and ``runflow-callbacks --version`` both come from here, so
the version is written once, in ``pyproject.toml``. Importing this module is free:
:mod:`importlib.metadata` (which costs more than the whole of ``runflow-callbacks sign``) is
imported only when :func:`distribution_version` is called.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DISTRIBUTION", "UNKNOWN_VERSION", "distribution_version"]

#: The name the package is installed under (``pip install runflow-callbacks``).
DISTRIBUTION: Final = "runflow-callbacks"
#: The version reported when the package runs without being installed (a bare source tree on
#: ``sys.path``): a valid PEP 440 version that sorts below every release and says "unknown".
UNKNOWN_VERSION: Final = "0+unknown"


def distribution_version() -> str:
    """The version of the installed ``runflow-callbacks``, else :data:`UNKNOWN_VERSION`."""
    import importlib.metadata  # noqa: PLC0415 - costly; only paid when the version is asked for

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION
