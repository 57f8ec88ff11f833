"""Running ``kdpm2`` in-process for the command-line tests."""

from __future__ import annotations

import pytest

from kdpm2 import cli


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``kdpm2 argv...`` in-process: exit status, stdout and stderr (argparse's exits included)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err
