"""Every ```python block of docs/*.md runs: each file's blocks in order, in one namespace.

A block whose first line is ``# docs: skip`` is not run. Blocks run with a fresh
temporary directory as the working directory, so files they write go away.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
SKIP_MARKER = "# docs: skip"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block, skipped ones left out."""
    blocks = []
    for match in _BLOCK.finditer(text):
        code = match.group(1)
        first = code.lstrip("\n").splitlines()[0].strip() if code.strip() else ""
        if first == SKIP_MARKER:
            continue
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, code))
    return blocks


def doc_files() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("name", doc_files())
def test_doc_python_blocks_run(name, tmp_path, monkeypatch, request):
    path = DOCS / name
    if name == "ray.md":
        # Ray connects a process to one cluster: the session's head node
        # (DAGLITE_RAY_ADDRESS), which RayBackend() then connects to.
        pytest.importorskip("ray")
        request.getfixturevalue("ray_address")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        # Pad so tracebacks show the line number inside the Markdown file.
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


def test_block_extraction_handles_skip_marker_and_files_without_code():
    text = (
        "# Title\n\nNo code here.\n\n```text\nnot python\n```\n\n"
        "```python\nx = 1\n```\n\n"
        "```python\n# docs: skip\nraise SystemExit\n```\n\n"
        "```python\ny = x + 1\n```\n"
    )
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["x = 1\n", "y = x + 1\n"]
    assert [line for line, _ in blocks] == [10, 19]
    assert python_blocks("# Only prose\n\nNothing to run.\n") == []
    namespace: dict = {}
    for _, code in blocks:
        exec(code, namespace)
    assert namespace["y"] == 2
