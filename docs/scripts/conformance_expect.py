"""Regenerate the shipped expectation file of diffusers 0.42 (``kdpm2_spec/expectations/diffusers-0.42.json``).

Run from the repository root with diffusers 0.42.1 installed:

    PYTHONPATH=src:spec python docs/scripts/conformance_expect.py [--seeds 10]

It records diffusers' failures with ``python -m kdpm2_spec check ... --write-expect`` at the ``ci``
profile's seed and at seeds 1 to N - 1, each run merged into the file the previous one wrote
(``--expect FILE --write-expect FILE``), so that the file covers every signature those seeds
meet; then it replaces each recorded message by the reason below (a signature without one keeps
its message, and the script says so: write the reason here). Finally it checks the file: diffusers
must pass it at every one of those seeds (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "spec" / "kdpm2_spec" / "expectations" / "diffusers-0.42.json"
TARGET = "diffusers:KDPM2DiscreteScheduler"

REASONS = {
    (
        "sigmas_interpol",
        "not finite at the first entry",
    ): "log 0 in the midpoint lerp: sigmas_interpol[0] is NaN "
    "(diffusers #14368; never read on the CPU)",
    (
        "timesteps",
        "rise by less than 0.5",
    ): "main Karras timesteps are rounded, the midpoints not: from about 48 "
    "steps they repeat and rise (#5746)",
    (
        "timesteps",
        "below 0",
    ): "trailing spacing: np.arange(T, 0, -T / n) yields n + 1 timesteps for some n "
    "(61, 103... of 1000), the last of them -1",
    (
        "timesteps",
        "not the timestep of the call's sigma at main entries",
    ): "the extra trailing timestep -1 "
    "(n + 1 timesteps for some n) has no sigma",
    (
        "sigmas",
        "2 entries too many",
    ): "trailing spacing: n + 1 steps for some n (np.arange overshoots)",
    (
        "sigmas_interpol",
        "2 entries too many",
    ): "trailing spacing: n + 1 steps for some n (np.arange overshoots)",
    (
        "timesteps",
        "2 entries too many",
    ): "trailing spacing: n + 1 steps for some n (np.arange overshoots)",
    (
        "timesteps",
        "main Karras timesteps rounded",
    ): "diffusers rounds the main Karras timesteps to integers and "
    "leaves the midpoints fractional (#5746); the spec's default does not round",
    (
        "first call",
        "at another step index",
    ): "a repeated first timestep (rounded Karras timesteps clipped at "
    "T - 1): without set_begin_index the first call looks up the second match and skips call 0",
    (
        "step",
        "raises NotImplementedError",
    ): "prediction_type='sample' raises NotImplementedError in step",
    (
        "prev_sample",
        "beyond one ulp",
    ): "float16/bfloat16 steps computed in the tensor dtype, several roundings "
    "((x - (x - s eps)) / s)",
    (
        "pred_original_sample",
        "beyond one ulp",
    ): "float16/bfloat16 x0 computed in the tensor dtype",
    (
        "set_begin_index(len(timesteps))",
        "no error",
    ): "set_begin_index accepts any value",
    ("set_begin_index(-1)", "no error"): "set_begin_index accepts any value",
    (
        "step past the end",
        "no error",
    ): "step past the end indexes sigmas out of their pairs instead of raising",
    (
        "step past the end",
        "raises IndexError",
    ): "step past the end raises IndexError, not ValueError",
}
"""Why diffusers 0.42 fails each way it does, by (what, kind) of the signature."""


def run(
    seed: int | None, expect: Path | None, write: Path | None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")]),
    }
    command = [
        sys.executable,
        "-m",
        "kdpm2_spec",
        "check",
        TARGET,
        "--profile",
        "ci",
    ]
    command += [] if seed is None else ["--seed", str(seed)]
    command += [] if expect is None else ["--expect", str(expect)]
    command += [] if write is None else ["--write-expect", str(write)]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, check=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="record the ci seed and seeds 1 .. N-1 (default 10)",
    )
    args = parser.parse_args()
    seeds: list[int | None] = [None, *range(1, args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "expect.json"
        for seed in seeds:
            done = run(seed, work if work.exists() else None, work)
            print(
                f"seed {seed if seed is not None else 'ci'}: {done.stdout.splitlines()[-1] if done.stdout else done.stderr}"
            )
            if done.returncode != 0:
                raise SystemExit(
                    f"recording at seed {seed} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                )
        data = json.loads(work.read_text(encoding="utf-8"))
    missing = []
    for body in data["properties"].values():
        for failure in body.get("failures", []):
            reason = REASONS.get((failure["what"], failure["kind"]))
            if reason is None:
                missing.append(f"{failure['what']}: {failure['kind']}")
            else:
                failure["reason"] = reason
    data["target"] = TARGET
    OUT.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    for text in missing:
        print(f"no reason for {text!r}: add one to REASONS")
    for seed in seeds:
        done = run(seed, OUT, None)
        print(
            f"check at seed {seed if seed is not None else 'ci'}: exit {done.returncode}: {done.stdout.splitlines()[-1]}"
        )
        if done.returncode != 0:
            raise SystemExit(done.stdout)


if __name__ == "__main__":
    main()
