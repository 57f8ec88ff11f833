"""The differential mode: two implementations driven with the same draws, every difference reported.

For bisecting a regression the reference is the wrong yardstick (both sides may deviate from it
in the same known ways); the question is what changed. ``python -m kdpm2_spec diff A B`` draws
pipeline runs (``strategies.Probe``: a configuration, a step count, image to image or not,
inpainting or not, a data seed) over the constructor arguments both sides accept, runs each on
both sides, each in its own worker process, and compares what a pipeline sees:

- the tables after ``set_timesteps`` (``timesteps``, ``sigmas``, ``sigmas_interpol``,
  ``init_noise_sigma``) and which methods exist (``set_begin_index``, ``add_noise``...);
- every call of the run: the model input, ``prev_sample``, ``pred_original_sample``, the
  ``add_noise`` results, and any exception (its type).

The model is a fixed smooth function of the model input and the timestep, so both sides get the
same model however they compute. Each side is ``MODULE:CLASS``, ``MODULE:CLASS@DIR`` (imported
with ``DIR`` first on the path: another installed release, ``pip install --no-deps --target DIR
pkg==X``) or a snapshot file written by ``python -m kdpm2_spec snapshot`` (the recorded
behaviour of a version you trust, for ``git bisect run``). A difference beyond ``--rtol``
(relative to the largest value compared, 1e-5 by default: float32 rounding is not a behaviour
change) is reported once per kind, with the number of runs that show it and the command that
reproduces the smallest one. Exit status: 0 no difference, 1 differences, 2 cannot judge.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SNAPSHOT_KEY, SNAPSHOT_FORMAT = "kdpm2_spec_snapshot", 1
"""The key and version that mark a snapshot file."""

RTOL = 1e-5
"""Default tolerance of a difference, relative to the largest value compared (float32 rounding is not behaviour)."""


def add_commands(commands: Any) -> None:
    """Add ``diff`` and ``snapshot`` to the command line's subcommands."""
    diff = commands.add_parser("diff", help="compare two implementations (or one and a snapshot) on the same draws")
    diff.add_argument("a", metavar="A", help="MODULE:CLASS, MODULE:CLASS@DIR or a snapshot file")
    diff.add_argument("b", metavar="B", help="the same, for the other side")
    snap = commands.add_parser("snapshot", help="record an implementation's behaviour on fixed draws")
    snap.add_argument("target", metavar="MODULE:CLASS", help="MODULE:CLASS or MODULE:CLASS@DIR")
    snap.add_argument("--out", required=True, metavar="FILE", help="the snapshot file to write (JSON)")
    for command in (diff, snap):
        command.add_argument("--examples", type=int, default=60, metavar="N", help="drawn runs (default: 60)")
        command.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
        command.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="time limit per run")
    diff.add_argument(
        "--rtol", type=float, default=RTOL, help=f"tolerance, relative to the largest value (default {RTOL:g})"
    )
    diff.add_argument("--case", default=None, help="compare one run (a Probe repr, as a report prints it)")
    diff.add_argument("--json", default=None, metavar="FILE", help="write the differences as JSON")


# -- one side: a pipeline run, recorded ---------------------------------------------------------


def pipeline_model(model_input: np.ndarray, timestep: float) -> np.ndarray:
    """The model both sides get: smooth, bounded, and a function of what a pipeline gives a model."""
    return 0.8 * np.tanh(model_input) + 0.1 * math.sin(float(timestep) / 100.0)


def _floats(value: Any, adapter: Any) -> list[float] | float | str:
    try:
        array = adapter.array(value)
    except Exception as error:
        return f"unreadable: {type(error).__name__}"
    return array.tolist()


def probe(target: Any, text: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a pipeline sees of ``target`` on the run ``text`` describes (a ``Probe`` repr), as JSON data."""
    from kdpm2_spec.cases import parse_case

    case = parse_case(text)
    a = target.adapter
    seen: dict[str, Any] = {}
    try:
        impl = target.create(case.config)
        impl.set_timesteps(case.steps)
    except Exception as error:
        seen["set_timesteps"] = f"raises {type(error).__name__}"
        return seen
    for name in ("timesteps", "sigmas", "sigmas_interpol", "init_noise_sigma"):
        seen[name] = _floats(getattr(impl, name), a) if hasattr(impl, name) else "missing"
    for method in ("set_begin_index", "add_noise", "index_for_timestep"):
        seen[f"has {method}"] = callable(getattr(impl, method, None))
    rng = np.random.default_rng(case.seed)
    shape = (2, 3)
    x0, eps = 0.5 + 0.5 * rng.standard_normal(shape), rng.standard_normal(shape)
    mask = rng.random(shape) < 0.5
    calls: list[dict[str, Any]] = []
    seen["calls"] = calls
    try:
        timesteps = impl.timesteps
        start = 0 if case.begin is None else min(2 * case.begin, len(timesteps) - 1)
        if (case.begin is not None or case.inpaint) and seen["has set_begin_index"]:
            impl.set_begin_index(start)
        if case.begin is None:
            x = a.tensor(eps * float(a.array(impl.init_noise_sigma)))
        else:
            x = impl.add_noise(a.tensor(x0), a.tensor(eps), timesteps[start : start + 1])
            seen["add_noise"] = _floats(x, a)
        for k in range(start, len(timesteps)):
            t = timesteps[k]
            entry: dict[str, Any] = {"call": k}
            calls.append(entry)
            model_input = impl.scale_model_input(x, t)
            entry["model input"] = _floats(model_input, a)
            out = pipeline_model(a.array(model_input), float(a.array(t)))
            result = impl.step(a.tensor(out), t, x)
            x = result.prev_sample
            entry["prev_sample"] = _floats(x, a)
            denoised = getattr(result, "pred_original_sample", None)
            entry["pred_original_sample"] = "missing" if denoised is None else _floats(denoised, a)
            if case.inpaint and k + 1 < len(timesteps):
                noised = impl.add_noise(a.tensor(x0), a.tensor(eps), timesteps[k + 1 : k + 2])
                entry["add_noise after the call"] = _floats(noised, a)
                x = a.tensor(np.where(mask, a.array(x), a.array(noised)))
    except Exception as error:
        seen["raises"] = f"{type(error).__name__} at call {len(calls) - 1 if calls else 'before the loop'}"
    return seen


# -- comparing two recorded behaviours ---------------------------------------------------------


def _values(value: Any) -> np.ndarray | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.array([value], dtype=np.float64)
    if isinstance(value, list):
        try:
            return np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
    return None


def _differ(a: Any, b: Any, rtol: float, scale: float = 1.0) -> str | None:
    """How ``a`` and ``b`` differ (``None``: within ``rtol`` of the largest value)."""
    x, y = _values(a), _values(b)
    if x is None or y is None:
        return None if a == b else f"{_short(a)} vs {_short(b)}"
    if x.shape != y.shape:
        return f"{len(x)} vs {len(y)} entries"
    nan_x, nan_y = ~np.isfinite(x), ~np.isfinite(y)
    if (nan_x != nan_y).any():
        i = int(np.flatnonzero(nan_x != nan_y)[0])
        return f"[{i}] {x[i]!r} vs {y[i]!r} (not finite on one side)"
    both = ~nan_x
    if not both.any():
        return None
    size = max(1.0, scale, float(np.max(np.abs(x[both]))), float(np.max(np.abs(y[both]))))
    err = np.where(both, np.abs(x - y), 0.0)
    if err.max() <= rtol * size:
        return None
    i = int(np.argmax(err))
    return f"[{i}] {x[i]!r} vs {y[i]!r} (difference {err[i]:.3g} > {rtol:g} * {size:.3g})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare(a: dict[str, Any], b: dict[str, Any], rtol: float = RTOL) -> list[tuple[str, str]]:
    """Every difference between two behaviours: ``(what, how)`` pairs, the first differing call of the loop only."""
    found: list[tuple[str, str]] = []
    for key in sorted(set(a) | set(b) - {"calls"}):
        if key == "calls":
            continue
        how = _differ(a.get(key, "absent"), b.get(key, "absent"), rtol)
        if how is not None:
            found.append((key, how))
    calls_a, calls_b = a.get("calls", []), b.get("calls", [])
    scale = 1.0
    for call_a, call_b in zip(calls_a, calls_b, strict=False):
        differences = []
        for key in sorted(set(call_a) | set(call_b)):
            if key == "call":
                continue
            values = [_values(call_a.get(key)), _values(call_b.get(key))]
            size = max(
                [scale]
                + [float(np.nanmax(np.abs(v))) for v in values if v is not None and v.size and np.isfinite(v).any()]
            )
            how = _differ(call_a.get(key, "absent"), call_b.get(key, "absent"), rtol, size)
            if how is not None:
                differences.append((key, how))
            scale = max(scale, size)
        if call_a.get("call") != call_b.get("call"):
            differences.append(("call index", f"{call_a.get('call')} vs {call_b.get('call')}"))
        if differences:
            order = "first-order" if (call_a.get("call", 0) - calls_a[0].get("call", 0)) % 2 == 0 else "second-order"
            found += [(f"{key} at a {order} call", f"call {call_a.get('call')}: {how}") for key, how in differences]
            break
    else:
        if len(calls_a) != len(calls_b):
            found.append(("number of calls", f"{len(calls_a)} vs {len(calls_b)}"))
    return found


# -- the sides, the draws, the command ----------------------------------------------------------


class Side:
    """One side of a comparison: a live target in a worker, or a snapshot file."""

    def __init__(self, spec: str, timeout: float) -> None:
        self.spec = spec
        self.snapshot: dict[str, Any] | None = None
        self.worker: Any = None
        path = Path(spec)
        if spec.endswith(".json") and path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get(SNAPSHOT_KEY) != SNAPSHOT_FORMAT:
                raise _usage(f'{spec}: not a snapshot file (no "{SNAPSHOT_KEY}": {SNAPSHOT_FORMAT})')
            self.snapshot = data
            self.name = f"{data.get('target', '?')} (snapshot {spec})"
            self.args = set(data.get("args", []))
            self.recorded = {p["case"]: p["behaviour"] for p in data.get("probes", [])}
            return
        from kdpm2_spec import worker

        target, _, folder = spec.partition("@")
        self.name = spec
        self.worker = worker.Worker({"op": "init", "target": target}, [folder] if folder else [], timeout)
        try:
            hello = self.worker.start()
        except worker.WorkerUsage as why:
            raise _usage(f"{spec}: {why}") from None
        self.args = set(hello["args"])

    def behaviour(self, case_text: str) -> dict[str, Any] | None:
        """The side's behaviour on a run (``None``: a snapshot that did not record it)."""
        if self.snapshot is not None:
            return self.recorded.get(case_text)
        from kdpm2_spec import worker

        try:
            answer = self.worker.ask({"op": "probe", "case": case_text})
        except worker.WorkerFailed as why:
            return {"process": str(why)}
        if "behaviour" not in answer:
            return {"harness": answer.get("error") or answer.get("usage")}
        return dict(answer["behaviour"])

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()


def _usage(message: str) -> Exception:
    from kdpm2_spec.deps import UsageError

    return UsageError(message)


def draws(args: set[str], examples: int, seed: int) -> list[str]:
    """The runs both sides are driven with: pinned ones, then ``examples`` drawn ones (reprs, in order)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as fix_seed

    from kdpm2_spec import strategies as ks

    pinned = [
        ks.Probe({}, 10, None, False, 0),
        ks.Probe({"use_karras_sigmas": True}, 50, None, False, 0),
        ks.Probe({"timestep_spacing": "trailing"}, 61, None, False, 0),
        ks.Probe({"timestep_spacing": "leading", "steps_offset": 1}, 25, 5, True, 1),
        ks.Probe({"prediction_type": "v_prediction"}, 12, 3, False, 2),
        ks.Probe({"use_exponential_sigmas": True}, 20, None, True, 3),
        ks.Probe({"use_beta_sigmas": True}, 15, 4, False, 4),
        ks.Probe({"use_karras_sigmas": True, "beta_schedule": "scaled_linear"}, 30, 10, True, 5),
    ]
    found = [repr(p) for p in pinned if set(p.config) <= args]

    @fix_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )
    @given(ks.probes(args))
    def collect(case: Any) -> None:
        found.append(repr(case))

    from kdpm2_spec.runner import hypothesis_storage

    with hypothesis_storage():
        collect()
    return list(dict.fromkeys(found))


def run_command(args: argparse.Namespace) -> int:
    """``diff`` or ``snapshot`` (see the module docstring); returns the exit status."""
    from kdpm2_spec.__main__ import require

    require()
    if args.command == "snapshot":
        return _snapshot(args)
    return _diff(args)


def _snapshot(args: argparse.Namespace) -> int:
    folder = Path(args.out).resolve().parent
    if not folder.is_dir():
        raise _usage(f"--out {args.out!r}: not a file in an existing folder")
    side = Side(args.target, args.timeout)
    try:
        cases = draws(side.args, args.examples, args.seed)
        probes = [{"case": text, "behaviour": side.behaviour(text)} for text in cases]
    finally:
        side.close()
    from kdpm2_spec.formats import versions

    data = {
        SNAPSHOT_KEY: SNAPSHOT_FORMAT,
        "target": args.target,
        "versions": versions(args.target.partition("@")[0]),
        "args": sorted(side.args),
        "examples": args.examples,
        "seed": args.seed,
        "probes": probes,
    }
    Path(args.out).write_text(json.dumps(data, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(probes)} runs of {args.target}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise _usage(f"--json {args.json!r}: not a file in an existing folder")
    a = Side(args.a, args.timeout)
    try:
        b = Side(args.b, args.timeout)
    except Exception:
        a.close()
        raise
    try:
        common = a.args & b.args
        if args.case is not None:
            from kdpm2_spec.cases import parse_case

            try:
                cases = [repr(parse_case(args.case))]
            except ValueError as error:
                raise _usage(str(error)) from None
        elif b.snapshot is not None or a.snapshot is not None:
            snap = b if b.snapshot is not None else a
            cases = [text for text in snap.recorded if _config_args(text) <= common]
        else:
            cases = draws(common, args.examples, args.seed)
        print(f"# {a.name} vs {b.name}: {len(cases)} runs, rtol {args.rtol:g}", flush=True)
        groups: dict[str, dict[str, Any]] = {}
        skipped = 0
        for text in cases:
            left, right = a.behaviour(text), b.behaviour(text)
            if left is None or right is None:
                skipped += 1
                continue
            for what, how in compare(left, right, args.rtol):
                group = groups.setdefault(what, {"what": what, "runs": 0, "case": text, "how": how})
                group["runs"] += 1
                if len(text) < len(group["case"]):
                    group["case"], group["how"] = text, how
    finally:
        a.close()
        b.close()
    for group in groups.values():
        group["reproduce"] = (
            f"python -m kdpm2_spec diff {_quote(args.a)} {_quote(args.b)} --case {_quote(group['case'])}"
        )
        print(
            f"DIFF {group['what']}: {group['how']} | in {group['runs']} of {len(cases)} runs | case: {group['case']} "
            f"| reproduce: {group['reproduce']}"
        )
    summary = f"{len(groups)} kinds of difference in {len(cases) - skipped} runs"
    print(summary + (f" ({skipped} not in the snapshot)" if skipped else ""))
    if args.json is not None:
        Path(args.json).write_text(
            json.dumps({"a": args.a, "b": args.b, "runs": len(cases), "differences": list(groups.values())}, indent=1)
            + "\n",
            encoding="utf-8",
        )
    return 1 if groups else 0


def _config_args(text: str) -> set[str]:
    from kdpm2_spec.cases import parse_case

    try:
        return set(parse_case(text).config)
    except (ValueError, AttributeError):
        return {"?"}


def _quote(text: str) -> str:
    from kdpm2_spec.cases import shell_quote

    return shell_quote(text)
