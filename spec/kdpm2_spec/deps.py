"""What the gate needs installed, checked before anything runs.

The reference and the invariants need only NumPy; the gate (``python -m kdpm2_spec check``, the
pytest plugin) also needs Hypothesis, and SciPy whenever a drawn configuration may ask for beta
sigmas (the reference computes them with ``scipy.stats.beta``). A gate that cannot judge must
not answer "failed": each missing package is named on one line with the command that installs
everything the gate needs, and the command line exits with status 2 (``UsageError``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection

INSTALL = 'pip install "kdpm2[spec]"'
"""The command that installs the gate's dependencies (the ``spec`` extra: Hypothesis and SciPy)."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(target_args: Collection[str] = (), need_beta: bool | None = None) -> list[str]:
    """The packages the gate lacks: ``hypothesis`` always, ``scipy`` when beta sigmas may be drawn.

    ``need_beta`` defaults to whether the target's constructor accepts ``use_beta_sigmas``.
    """
    beta = "use_beta_sigmas" in target_args if need_beta is None else need_beta
    wanted = ["hypothesis", *(["scipy"] if beta else [])]
    return [name for name in wanted if not installed(name)]


def message(packages: list[str], why: str = "") -> str:
    """One line naming the missing ``packages`` and the install command."""
    names = " and ".join(packages)
    verb = "is" if len(packages) == 1 else "are"
    reason = f" ({why})" if why else ""
    return f"the gate needs {names}, which {verb} not installed{reason}: {INSTALL}"


class UsageError(Exception):
    """The gate cannot judge (a bad argument, a target that does not load, a missing package): one line, exit status 2.

    Defined here, not in ``kdpm2_spec.__main__``, which ``python -m`` runs as another module.
    """
