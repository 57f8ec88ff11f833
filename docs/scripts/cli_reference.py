"""Write docs/cli.md, the command-line reference, from the ``kdpm2`` argument parser itself.

Run from the repository root:

    PYTHONPATH=src python docs/scripts/cli_reference.py

Every option of ``kdpm2 demo`` and ``kdpm2 schedule`` becomes a table row (flags, values and help
text), and the sample output of ``EXAMPLES`` is what ``kdpm2.cli.main`` prints today, so the page
cannot drift from the code; ``tests/test_cli.py`` checks that it has not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "cli.md"

INTRO = """# Command line

`kdpm2` (or `python -m kdpm2`) has two commands. `kdpm2 COMMAND --help` prints the same options.
This page is generated from the argument parser by `docs/scripts/cli_reference.py`; a test keeps
it in step with the code.

Errors in the arguments, or a configuration the scheduler rejects, print `kdpm2: error: ...` on
standard error and exit with status 2. The output and figure of `kdpm2 demo` are on the
[home page](index.md#why).
"""

EXAMPLES = {"schedule": ["schedule", "--steps", "4", "--use-karras-sigmas"]}
"""Commands whose output the page shows (deterministic ones only: the demo's times vary)."""


def _example(argv: list[str]) -> list[str]:
    """A console block: the command and what ``kdpm2.cli.main`` prints for it."""
    from kdpm2 import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(argv)
    assert status == 0, f"kdpm2 {' '.join(argv)} exited with {status}"
    return [
        "Sample output:",
        "",
        "```text",
        f"$ kdpm2 {' '.join(argv)}",
        *out.getvalue().rstrip().splitlines(),
        "```",
        "",
    ]


def _cell(text: object) -> str:
    """Text for a Markdown table cell: pipes escaped, ``<`` and ``>`` as entities."""
    return (
        str(text).replace("|", r"\|").replace("<", "&lt;").replace(">", "&gt;")
    )


def _values(action: argparse.Action) -> str:
    """What an option takes: its choices, its metavar, or nothing for a flag."""
    if action.choices is not None:
        return " ".join(f"`{choice}`" for choice in action.choices)
    if action.nargs == 0:
        return ""
    name = action.metavar or action.dest.upper()
    return f"`{name} ...`" if action.nargs in ("+", "*") else f"`{name}`"


def _rows(parser: argparse.ArgumentParser) -> list[str]:
    """One table per argument group of ``parser`` (``--help`` left out), help text as ``--help`` shows it."""
    formatter = parser._get_formatter()
    lines = []
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)
        ]
        if not actions:
            continue
        lines += [
            f"**{_cell(group.title)}**",
            "",
            "| option | values | meaning |",
            "|---|---|---|",
        ]
        for action in actions:
            flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
            meaning = formatter._expand_help(action) if action.help else ""
            lines.append(f"| {flags} | {_values(action)} | {_cell(meaning)} |")
        lines.append("")
    return lines


def _required_groups(parser: argparse.ArgumentParser) -> list[str]:
    """A sentence per required mutually exclusive group."""
    sentences = []
    for group in parser._mutually_exclusive_groups:
        if group.required:
            flags = ", ".join(
                f"`{action.option_strings[0]}`"
                for action in group._group_actions
            )
            sentences.append(f"Exactly one of {flags} is required.")
    return sentences


def reference() -> str:
    """The whole page, from ``kdpm2.cli.build_parser()``."""
    from kdpm2 import cli

    parser = cli.build_parser()
    commands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = [INTRO, f"`{parser.prog}`: {_cell(parser.description)}", ""]
    for name, sub in commands.choices.items():
        lines += [
            f"## `{sub.prog}`",
            "",
            _cell(helps[name]) + ".",
            "",
            _cell(sub.description),
            "",
        ]
        required = _required_groups(sub)
        lines += [*required, ""] if required else []
        lines += _example(EXAMPLES[name]) if name in EXAMPLES else []
        lines += _rows(sub)
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(reference())
    print(f"wrote {OUT.relative_to(ROOT)}")
