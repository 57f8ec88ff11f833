"""The ``kdpm2`` command line: ``kdpm2 demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="kdpm2", description="The KDPM2 (DPM-Solver-2) scheduler.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="sample a Gaussian problem with a closed-form denoiser and print the error")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from kdpm2 import demo

        demo.main()
    return 0
