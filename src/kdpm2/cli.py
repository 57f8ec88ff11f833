"""The ``kdpm2`` command line: ``kdpm2 demo`` and ``kdpm2 schedule``.

``kdpm2 schedule`` has one option per constructor argument of ``KDPM2DiscreteScheduler`` and
``KDPM2AncestralDiscreteScheduler`` (``--sampler dpm2a``, see ``kdpm2.cli_ancestral``), generated
from their signatures (``use_karras_sigmas`` becomes ``--use-karras-sigmas`` and
``--no-use-karras-sigmas``), so the command line follows the schedulers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from kdpm2 import functional, presets, validation

CHOICES = {
    "beta_schedule": validation.BETA_SCHEDULES,
    "prediction_type": functional.PREDICTION_TYPES,
    "timestep_spacing": validation.TIMESTEP_SPACINGS,
    "sigma_interpolation": validation.SIGMA_INTERPOLATIONS,
    "preset": presets.NAMES,
}
"""Constructor arguments that take one of a few names."""

MAX_FILE_BYTES = 8 * 1024 * 1024
"""Largest ``--trained-betas`` file read (100000 betas, the most a schedule may have, take about 2.5 MB)."""

MAX_DEMO_POINTS = 1_000_000
"""Largest ``kdpm2 demo --points``: the reference solve keeps a few (points, 8, 2) float64 arrays (about 0.5 GB)."""

MAX_DEMO_STEPS = 10_000
"""Largest ``kdpm2 demo --steps`` value: 19,999 model calls per sampler, already minutes of work."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)``, exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _count(text: str, low: int = 1, high: int | None = None) -> int:
    """An integer of at least ``low`` (and at most ``high``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {validation.show(text)}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {validation.show(value)}")
    return value


def _demo_steps(text: str) -> int:
    """A demo step count: at least 2, so that the last non-zero sigma is sigma_min; at most ``MAX_DEMO_STEPS``."""
    return _count(text, 2, MAX_DEMO_STEPS)


def _demo_points(text: str) -> int:
    """A demo sample count, at most ``MAX_DEMO_POINTS`` (a billion would ask for 16 GB before failing)."""
    return _count(text, 1, MAX_DEMO_POINTS)


def _version() -> str:
    """The package's version (``kdpm2.__version__``, the one source the distribution's metadata reads)."""
    import kdpm2

    return kdpm2.__version__


def _floats(text: str) -> list[float]:
    """Comma-separated numbers (``14.6,3,0.5,0``)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {validation.show(text)}") from None


def _float_file(path: str) -> list[float]:
    """Numbers from a file: a JSON list, or separated by commas or white space."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_FILE_BYTES + 1)  # bounded: /dev/zero must not be read until killed
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: not UTF-8 text") from None
    if len(text) > MAX_FILE_BYTES:
        raise argparse.ArgumentTypeError(f"{path!r} is larger than {MAX_FILE_BYTES} bytes; expected a list of betas")
    try:
        values = json.loads(text)
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{path!r} is nested too deeply; expected a flat JSON list") from None
    except ValueError:
        return _floats(",".join(text.split()))
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]  # a file holding one number
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise argparse.ArgumentTypeError(f"{path!r} must hold a flat JSON list of numbers")
    try:
        return [float(v) for v in values]
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{path!r} holds a number too large for a float") from None


def _option_type(name: str, parameter: inspect.Parameter) -> dict[str, Any]:
    """argparse keywords for one constructor argument, from its default and annotation."""
    default = parameter.default
    if name == "trained_betas":
        return {"type": _float_file, "metavar": "FILE", "help": "betas from a file (JSON list or one per line)"}
    if isinstance(default, bool):
        return {"action": argparse.BooleanOptionalAction, "help": f"(default: {default})"}
    if name == "preset":
        return {"choices": CHOICES[name], "metavar": "NAME", "help": _PRESET_HELP}
    if name in CHOICES:
        return {"choices": CHOICES[name], "help": f"(default: {default})"}
    if isinstance(default, int):
        return {"type": int, "metavar": "INT", "help": f"(default: {default})"}
    if isinstance(default, float) or "float" in str(parameter.annotation):
        shown = "from the schedule" if name.startswith("sigma_") else "infinity" if name == "s_tmax" else default
        return {"type": float, "metavar": "FLOAT", "help": f"(default: {shown})"}
    return {"type": str, "help": f"(default: {default})"}


_PRESET_HELP = (
    "reproduce a front-end's DPM2 sampler (DPM2 a with --sampler dpm2a): "
    + ", ".join(presets.NAMES)
    + "; sets the other options to the preset's and prints, per model call, sigma, timestep and c_in, "
    "and the initial-noise factor"
)


def add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per constructor argument; options not given keep the scheduler's defaults."""
    from kdpm2 import cli_ancestral

    group = parser.add_argument_group("scheduler configuration (constructor arguments of the --sampler's class)")
    for name, (parameter, only) in cli_ancestral.parameters().items():
        flag = "--" + name.replace("_", "-")
        keywords = _option_type(name, parameter)
        if only is not None:
            keywords["help"] = f"{keywords['help']} [--sampler {only} only]"
        # argparse names the destination after the flag: --use-karras-sigmas -> use_karras_sigmas
        group.add_argument(flag, default=argparse.SUPPRESS, **keywords)


def build_parser() -> argparse.ArgumentParser:
    """The ``kdpm2`` argument parser with its ``demo`` and ``schedule`` commands."""
    parser = Parser(prog="kdpm2", description="The KDPM2 (DPM-Solver-2) diffusion scheduler.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="sample a 2-D Gaussian mixture with its exact denoiser and print the error per step count",
        description="Sample a 2-D Gaussian mixture with its closed-form denoiser (no weights, no downloads) "
        "at several step counts; print model calls, distance to the exact ODE solution and time, next to "
        "k-diffusion's sample_dpm_2 and diffusers' scheduler when they are installed; write kdpm2-demo.png.",
    )
    demo.add_argument(
        "--steps",
        type=_demo_steps,
        nargs="+",
        metavar="N",
        help=f"step counts, from 2 to {MAX_DEMO_STEPS:,} (default: 8 .. 128)",
    )
    demo.add_argument("--out", metavar="DIR", default=".", help="directory for kdpm2-demo.png (default: %(default)s)")
    demo.add_argument("--no-plot", action="store_true", help="do not write the figure")
    demo.add_argument(
        "--points",
        type=_demo_points,
        default=2000,
        help=f"number of samples, at most {MAX_DEMO_POINTS:,} (default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: %(default)s)")
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.add_argument("--no-compare", action="store_true", help="skip k-diffusion and diffusers")

    schedule = commands.add_parser(
        "schedule",
        help="print the per-call timesteps and sigmas of a configuration",
        description="Print what the scheduler feeds the model at each call of one configuration: "
        "call index, order, timestep, sigma of the model input and the sigma the sample moves to.",
    )
    source = schedule.add_mutually_exclusive_group(required=True)
    source.add_argument("--steps", type=_count, metavar="N", help="number of inference steps")
    source.add_argument("--sigmas", type=_floats, metavar="S0,S1,...", help="custom sigmas, the final one included")
    source.add_argument("--timesteps", type=_floats, metavar="T0,T1,...", help="custom decreasing timesteps")
    schedule.add_argument("--json", action="store_true", help="print the tables and the config as JSON")
    schedule.add_argument(
        "--sampler",
        choices=("dpm2", "dpm2a"),
        default="dpm2",
        help="dpm2: KDPM2DiscreteScheduler (default); dpm2a: KDPM2AncestralDiscreteScheduler (DPM2 a), "
        "which also prints each step's sigma_down and sigma_up",
    )
    add_scheduler_options(schedule)
    return parser


BROKEN_PIPE = 141
"""Exit status when the reader of standard output went away (``kdpm2 schedule ... | head``): 128 + SIGPIPE."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the chosen command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = run_demo(args) if args.command == "demo" else run_schedule(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return status
    except (ValueError, TypeError, ImportError) as error:
        print(f"kdpm2: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's final flush cannot fail again.

    A closed pipe is the reader's choice (``| head``), not an error worth a traceback: Python's
    documentation recommends exactly this (``signal`` module, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured or replaced stdout)
        pass


def run_demo(args: argparse.Namespace) -> int:
    from kdpm2 import demo

    validation.device(demo.choose_device(args.device), values=True)  # before the run, not after it
    if not args.no_plot:
        check_out_directory(args.out)
    demo.main(
        step_counts=args.steps or demo.STEP_COUNTS,
        out=None if args.no_plot else args.out,
        points=args.points,
        seed=args.seed,
        device=args.device,
        compare=not args.no_compare,
    )
    return 0


def check_out_directory(out: str) -> None:
    """``--out`` must be a directory where ``kdpm2-demo.png`` can be written (created if missing).

    Checked by writing a temporary file, so a read-only file system or a path through a file fails
    here, before the run, and not after it.
    """
    if not out:
        raise ValueError("--out must name a directory; got ''")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a directory")
    figure = os.path.join(out, "kdpm2-demo.png")
    if os.path.isdir(figure):
        raise ValueError(f"--out {out!r}: {figure!r} is a directory; cannot write the figure there")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"--out {out!r} is not a writable directory ({error.strerror or error})") from None


def run_schedule(args: argparse.Namespace) -> int:
    from kdpm2 import cli_ancestral
    from kdpm2.scheduler import KDPM2DiscreteScheduler

    if args.sampler == "dpm2a":
        return cli_ancestral.run(args)
    cli_ancestral.refuse_foreign(args, "dpm2")
    config = {name: getattr(args, name) for name in KDPM2DiscreteScheduler._init_parameters() if name in args}
    preset = config.pop("preset", None)
    if preset is not None:
        scheduler = KDPM2DiscreteScheduler.from_preset(preset, None, **config)
    else:
        scheduler = KDPM2DiscreteScheduler(**config)
    scheduler.set_timesteps(args.steps, sigmas=args.sigmas, timesteps=args.timesteps)
    rows = calls(scheduler)
    if not all(math.isfinite(row[key]) for row in rows for key in ("timestep", "sigma", "to_sigma")):
        raise ValueError("the schedule holds non-finite values; this configuration is out of range")
    if preset is not None:
        print(json.dumps(preset_json(scheduler), indent=2, allow_nan=False) if args.json else preset_table(scheduler))
    elif args.json:
        print(json.dumps(schedule_json(scheduler), indent=2, allow_nan=False))  # NaN is not JSON
    else:
        print(schedule_table(scheduler))
    return 0


def calls(scheduler: Any) -> list[dict[str, Any]]:
    """One row per model call: index, order, timestep, sigma of the model input, sigma moved to."""
    sigmas, interpol = scheduler.sigmas.tolist(), scheduler.sigmas_interpol.tolist()
    rows = []
    for k, t in enumerate(scheduler.timesteps.tolist()):
        first = k % 2 == 0
        rows.append(
            {
                "call": k,
                "order": 1 if first else 2,
                "timestep": t,
                "sigma": sigmas[k] if first else interpol[k],
                "to_sigma": interpol[k + 1] if first else sigmas[k],
            }
        )
    return rows


def schedule_json(scheduler: Any) -> dict[str, Any]:
    """The scheduler's tables as it holds them, its config and the per-call rows."""
    return {
        "num_inference_steps": scheduler.num_inference_steps,
        "init_noise_sigma": float(scheduler.init_noise_sigma),
        "timesteps": scheduler.timesteps.tolist(),
        "sigmas": scheduler.sigmas.tolist(),
        "sigmas_interpol": scheduler.sigmas_interpol.tolist(),
        "calls": calls(scheduler),
        "config": dict(scheduler.config),
    }


def schedule_table(scheduler: Any) -> str:
    """The per-call table, with a line on the schedule's size and initial noise."""
    rows = calls(scheduler)
    lines = [
        f"{scheduler.num_inference_steps} steps, {len(rows)} model calls, "
        f"init_noise_sigma {float(scheduler.init_noise_sigma):.6g}",
        f"{'call':>4} {'order':>5} {'timestep':>12} {'sigma':>12} {'to sigma':>12}",
    ]
    for row in rows:
        lines.append(
            f"{row['call']:>4} {row['order']:>5} {row['timestep']:>12.6g} {row['sigma']:>12.6g} {row['to_sigma']:>12.6g}"
        )
    return "\n".join(lines)


def preset_calls(scheduler: Any) -> list[list[float]]:
    """``[sigma, timestep, c_in]`` per model call: what a front-end's UNet sees (``c_in = 1/sqrt(sigma^2 + 1)``)."""
    return [[row["sigma"], row["timestep"], 1 / math.sqrt(row["sigma"] ** 2 + 1)] for row in calls(scheduler)]


def preset_json(scheduler: Any) -> dict[str, Any]:
    """A preset's model calls and the factor on the initial unit noise, with the config."""
    return {
        "preset": scheduler.config.preset,
        "num_inference_steps": scheduler.num_inference_steps,
        "init_noise_scale": float(scheduler.init_noise_sigma),
        "calls": preset_calls(scheduler),
        "config": dict(scheduler.config),
    }


def preset_table(scheduler: Any) -> str:
    """A preset's model calls as a table, after a line with the initial-noise factor."""
    rows = preset_calls(scheduler)
    lines = [
        f"preset {scheduler.config.preset}: {scheduler.num_inference_steps} steps, {len(rows)} model calls, "
        f"initial noise = unit noise x {float(scheduler.init_noise_sigma):.9g}",
        f"{'call':>4} {'sigma':>14} {'timestep':>14} {'c_in':>14}",
    ]
    lines += [f"{k:>4} {sigma:>14.9g} {t:>14.9g} {c_in:>14.9g}" for k, (sigma, t, c_in) in enumerate(rows)]
    return "\n".join(lines)
