"""``python -m runflow_callbacks`` runs the command line."""

from __future__ import annotations

import sys

from runflow_callbacks.cli import main

if __name__ == "__main__":
    sys.exit(main())
