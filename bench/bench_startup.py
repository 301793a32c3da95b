"""What starting runflow-callbacks costs: imports, the command line, the pytest plugin.

Every row is a fresh process of this interpreter, timed from spawn to exit (wall clock). The
rows run interleaved, one of each per round, and each row gives the median of ``--repeat``
rounds, in wall-clock time and in the process's CPU time (user + system, from ``getrusage``:
steadier than the wall clock on a shared machine). The ratios are to ``python -c "import
cryptography"``, the floor of the target:

* ``python -c pass``: the interpreter alone (with this environment's ``site``);
* ``import cryptography``: the floor;
* ``(reference) cryptography's HMAC``: what ``sign`` cannot avoid (cryptography's compiled
  bindings and ``typing``);
* ``(reference) importlib.metadata``: what ``--version`` cannot avoid (it reads the installed
  distribution's metadata);
* ``import runflow_callbacks.verifier``, ``from runflow_callbacks import sign, verify``,
  ``import runflow_callbacks``: what a user of the verifier pays;
* ``(reference) the receiving stack``: ``from runflow_callbacks import CallbackReceiver,
  parse_callback, RunflowClient`` (pydantic, httpx, starlette, anyio);
* ``runflow-callbacks --version`` and ``runflow-callbacks sign --secret ... FILE``: the
  console script, as a user runs it;
* ``pytest --co, plugin off`` and ``pytest --co, plugin on``: ``python -m pytest --co -q`` in
  an empty directory with ``-p no:runflow_callbacks`` and without it (other installed plugins
  load in both), and their difference; pytest's own start-up varies by more than the plugin
  costs, so ``import pytest`` and ``import pytest, then the plugin`` measure the plugin alone.

Below the table, ``python -X importtime -c "import runflow_callbacks.verifier"``: the
cumulative microseconds of the ``runflow_callbacks.verifier`` line (the package root
included), median of the rounds.

Target: ``runflow-callbacks --version`` and ``sign`` within about 2x of ``import
cryptography``. Set ``PYTHONPATH`` to measure another source tree with the same interpreter.

    python bench/bench_startup.py [--repeat 21]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FLOOR = "import cryptography"
HMAC_FLOOR = "(reference) cryptography's HMAC"
METADATA_FLOOR = "(reference) importlib.metadata"
VERSION = "runflow-callbacks --version"
SIGN = "runflow-callbacks sign"
PLUGIN_OFF = "pytest --co, plugin off"
PLUGIN_ON = "pytest --co, plugin on"
PYTEST_ALONE = "import pytest"
PYTEST_AND_PLUGIN = "import pytest, then the plugin"
TARGET = 2.0
SECRET = "whsec_bench_0123456789abcdef"
_IMPORTTIME_LINE = re.compile(r"import time:\s*\d+ \|\s*(\d+) \| runflow_callbacks\.verifier$")


def console_script() -> Path:
    """The ``runflow-callbacks`` script installed next to this interpreter."""
    script = Path(sys.executable).parent / "runflow-callbacks"
    if not script.exists():
        raise SystemExit(f"no runflow-callbacks script next to {sys.executable}: install first")
    return script


def commands(workdir: Path) -> dict[str, list[str]]:
    """Each row's command line; ``workdir`` holds the body to sign and the empty test dir."""
    python = sys.executable
    body = workdir / "body.json"
    body.write_bytes(b"{}")
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    script = str(console_script())
    pytest = [python, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", str(empty)]
    return {
        "python -c pass": [python, "-c", "pass"],
        FLOOR: [python, "-c", "import cryptography"],
        HMAC_FLOOR: [
            python,
            "-c",
            "from cryptography.hazmat.primitives import hmac",
        ],
        METADATA_FLOOR: [python, "-c", "import importlib.metadata"],
        "import runflow_callbacks.verifier": [python, "-c", "import runflow_callbacks.verifier"],
        "from runflow_callbacks import sign, verify": [
            python,
            "-c",
            "from runflow_callbacks import sign, verify",
        ],
        "import runflow_callbacks": [python, "-c", "import runflow_callbacks"],
        "(reference) the receiving stack": [
            python,
            "-c",
            "from runflow_callbacks import CallbackReceiver, parse_callback, RunflowClient",
        ],
        VERSION: [script, "--version"],
        SIGN: [script, "sign", "--secret", SECRET, str(body)],
        PLUGIN_OFF: [*pytest, "-p", "no:runflow_callbacks"],
        PLUGIN_ON: pytest,
        PYTEST_ALONE: [python, "-c", "import pytest"],
        PYTEST_AND_PLUGIN: [python, "-c", "import pytest, runflow_callbacks.testing.plugin"],
    }


#: pytest's status for a directory without tests ("no tests collected").
_NO_TESTS = 5


def check(name: str, command: list[str]) -> None:
    """Run ``command`` once; raise unless it succeeds (a failing command would be timed too)."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode not in {0, _NO_TESTS}:
        raise RuntimeError(f"{name!r} exited {result.returncode}: {result.stderr.strip()}")


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _seconds(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of ``command``."""
    cpu, start = _cpu_of_children(), time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, _cpu_of_children() - cpu


def _importtime_us() -> int:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import runflow_callbacks.verifier"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line.strip())
        if match:
            return int(match.group(1))
    raise RuntimeError("no runflow_callbacks.verifier line in the -X importtime output")


@dataclass
class Row:
    name: str
    seconds: float
    ratio: float
    cpu_seconds: float
    cpu_ratio: float
    runs: list[float]


@dataclass
class Result:
    rows: list[Row]
    importtime_us: float

    def row(self, name: str) -> Row:
        return next(row for row in self.rows if row.name == name)


def measure(*, repeat: int = 21) -> Result:
    """Every row ``repeat`` times, interleaved; the median of each, wall clock and CPU."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        table = commands(Path(tmp))
        for name, command in table.items():  # also warms the OS caches and the .pyc files
            check(name, command)
        walls: dict[str, list[float]] = {name: [] for name in table}
        cpus: dict[str, list[float]] = {name: [] for name in table}
        importtimes: list[int] = []
        for _ in range(repeat):
            for name, command in table.items():
                wall, cpu = _seconds(command)
                walls[name].append(wall)
                cpus[name].append(cpu)
            importtimes.append(_importtime_us())
    floor, cpu_floor = statistics.median(walls[FLOOR]), statistics.median(cpus[FLOOR])
    rows = []
    for name in table:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        rows.append(Row(name, wall, wall / floor, cpu, cpu / cpu_floor, walls[name]))
    return Result(rows, statistics.median(importtimes))


def table(result: Result) -> str:
    """A Markdown table of the rows, then the plugin's cost and the importtime figure."""
    lines = [
        "| what | median ms | ratio | CPU ms | CPU ratio | fastest, slowest ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        spread = f"{min(row.runs) * 1000:.1f}, {max(row.runs) * 1000:.1f}"
        lines.append(
            f"| {row.name} | {row.seconds * 1000:.1f} | {row.ratio:.2f}x "
            f"| {row.cpu_seconds * 1000:.1f} | {row.cpu_ratio:.2f}x | {spread} |"
        )

    def difference(more: str, less: str) -> str:
        wall = result.row(more).seconds - result.row(less).seconds
        cpu = result.row(more).cpu_seconds - result.row(less).cpu_seconds
        return f"{wall * 1000:+.1f} ms ({cpu * 1000:+.1f} ms CPU)"

    lines += [
        "",
        f"pytest plugin (on minus off): {difference(PLUGIN_ON, PLUGIN_OFF)}; "
        f"importing it after pytest: {difference(PYTEST_AND_PLUGIN, PYTEST_ALONE)}",
        "`python -X importtime -c 'import runflow_callbacks.verifier'`: "
        f"{result.importtime_us / 1000:.1f} ms cumulative",
    ]
    return "\n".join(lines)


def verdicts(result: Result) -> list[str]:
    """Per command of the target: met or missed, and its ratio to what it cannot avoid."""
    lines = []
    for name, own_floor in ((VERSION, METADATA_FLOOR), (SIGN, HMAC_FLOOR)):
        row = result.row(name)
        met = "met" if row.ratio <= TARGET else "MISSED"
        share = row.seconds / result.row(own_floor).seconds
        lines.append(
            f"{name}: {row.seconds * 1000:.1f} ms, {row.ratio:.2f}x `{FLOOR}` "
            f"(target <= {TARGET:.1f}x): {met}; {share:.2f}x `{own_floor}`; "
            f"CPU {row.cpu_ratio:.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=21, help="rounds (the median is kept)")
    args = parser.parse_args(argv)
    where = os.environ.get("PYTHONPATH") or "the installed package"
    print(f"{sys.executable} ({sys.version.split()[0]}), runflow_callbacks from {where}")
    print()
    result = measure(repeat=args.repeat)
    print(table(result))
    print()
    print("\n".join(verdicts(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
