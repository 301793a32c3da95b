"""Every fenced ``python`` block of README.md runs, so the README cannot rot.

A block runs as a script in a fresh namespace, in a temporary directory, with
``RUNFLOW_CALLBACK_SECRETS`` set. A block whose first line is ``# test_file: NAME.py`` is a
test module instead: it is written under that name and run with pytest in a subprocess.
``console`` blocks are not run here (the CLI tests cover their commands).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SECRETS = "whsec_readme_current_0123456789,whsec_readme_previous_9876543210"
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
_TEST_FILE = re.compile(r"^#\s*test_file:\s*(\S+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # line of the first code line in README.md (1-based)
    code: str

    @property
    def test_file(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        match = _TEST_FILE.match(first.strip())
        return match.group(1) if match else None


def python_blocks(text: str) -> list[Block]:
    """The ``python`` fenced blocks of a Markdown text, with their line numbers."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        start = index + 1
        index = start
        while index < len(lines) and not lines[index].startswith(fence):
            index += 1
        if language.lower() in ("python", "py", "python3"):
            blocks.append(Block(line=start + 1, code="\n".join(lines[start:index]) + "\n"))
        index += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert BLOCKS, "README.md has no ```python block (did the fence syntax change?)"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", SECRETS)
    name = block.test_file
    if name is not None:
        (tmp_path / name).write_text(block.code, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"README.md line {block.line}: {name} failed\n{result.stdout}\n{result.stderr}"
        )
        return
    # The test id names the block's line, and tracebacks point into README.md itself.
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    namespace = {"__name__": "__main__", "__file__": str(README)}
    exec(code, namespace)  # noqa: S102 - running the README's own examples is the point


def test_block_extraction_keeps_line_numbers_and_skips_other_languages() -> None:
    text = "# T\n\n```console\n$ ls\n```\n\n```python\nx = 1\n```\n~~~py\n# test_file: t.py\n~~~\n"
    blocks = python_blocks(text)
    assert [(b.line, b.code, b.test_file) for b in blocks] == [
        (8, "x = 1\n", None),
        (11, "# test_file: t.py\n", "t.py"),
    ]
