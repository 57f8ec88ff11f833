"""Every ```python example in docs/*.md and README.md runs, so the documentation cannot drift.

The blocks of one page run in order in one namespace (later examples use earlier names). A block
preceded by an HTML comment starting with ``<!-- skip-example`` is not run: only for examples that
need a download or a GPU. A block whose imports are missing skips the rest of its page.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
SKIP_MARKER = "<!-- skip-example"
MAX_SKIPPED = 3
"""Skipped examples across all pages: keep them few (the guide's, the home page's and the README's
swap into a downloaded pipeline)."""

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", re.MULTILINE)


class Example(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skipped: bool


def examples(path: Path) -> list[Example]:
    """The fenced ```python blocks of a Markdown file, with their skip marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, indent = i, match["indent"]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if match["lang"] == "python":
            previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
            found.append(Example(path, start + 1, textwrap.dedent(body), previous.startswith(SKIP_MARKER)))
        i = end + 1
    return found


def test_examples_are_found_and_few_are_skipped() -> None:
    every = [example for page in PAGES for example in examples(page)]
    assert len(every) >= 15, f"only {len(every)} python examples found in {[p.name for p in PAGES]}"
    skipped = [f"{e.path.name}:{e.line}" for e in every if e.skipped]
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped examples: {skipped}"


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; threads only contend on a busy 2-core runner
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    try:
        for example in examples(page):
            if example.skipped:
                continue
            for module in sorted(set(IMPORT.findall(example.code))):
                pytest.importorskip(module, reason=f"{page.name}:{example.line} needs {module}")
            where = f"{os.path.relpath(page, ROOT)}:{example.line}"
            try:
                exec(compile(example.code, where, "exec"), namespace)
            except Exception as error:
                error.add_note(f"in the example at {where}")
                raise
    finally:
        torch.set_num_threads(threads)
