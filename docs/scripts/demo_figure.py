"""Draw the home page's demo figure and record its numbers: ``docs/images/demo.{png,json}``.

Run from the repository root, in an environment with the ``demo`` extra (diffusers,
k-diffusion, matplotlib), then fill the pages' numbers from the new file:

    PYTHONPATH=src:spec python docs/scripts/demo_figure.py
    python docs/scripts/site_numbers.py

It runs ``kdpm2.demo.run`` with the demo's defaults (the run ``python -m kdpm2 demo`` makes),
writes the figure with ``kdpm2.demo.plot`` and the numbers with ``kdpm2.demo.record``, plus the
date, the machine and the versions, so that the home page's demo table (a ``demo`` marker of
``docs/scripts/site_numbers.py``) names where and when it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from kdpm2 import demo

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images"


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def processor() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
        ):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `kdpm2 demo` does on the CPU
    try:
        result = demo.run(demo.STEP_COUNTS)
    finally:
        torch.set_num_threads(threads)
    data = {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{os.cpu_count()}-core {processor()}",
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in ("torch", "numpy", "diffusers", "k-diffusion")
        },
        "command": "PYTHONPATH=src:spec python docs/scripts/demo_figure.py",
        **demo.record(result),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo.json").write_text(
        json.dumps(data, indent=1) + "\n", encoding="utf-8"
    )
    demo.plot(result, str(OUT / "demo.png"))
    print(demo.report(result))
    print(f"wrote {OUT / 'demo.json'} and {OUT / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
