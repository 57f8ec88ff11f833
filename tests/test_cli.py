"""The command line: ``kdpm2 demo`` and ``kdpm2 schedule`` (called in-process through ``main``)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers_cli import run_cli
from kdpm2 import KDPM2DiscreteScheduler, cli, demo


def table_errors(out: str) -> tuple[list[int], list[float]]:
    """Step counts and kdpm2 errors from the demo's table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["steps", "calls", "kdpm2"])
    steps, errors = [], []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        fields = line.split()
        steps.append(int(fields[0]))
        errors.append(float(fields[2]))
    return steps, errors


# -- demo --------------------------------------------------------------------------------------


def test_demo_prints_a_table_with_decreasing_error_of_order_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "demo", "--steps", "16", "32", "64", "--no-plot", "--no-compare")
    assert status == 0, out
    steps, errors = table_errors(out)
    assert steps == [16, 32, 64]
    assert all(b < a for a, b in itertools.pairwise(errors)), f"errors must decrease with the step count: {errors}"
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(order - 2) < 0.35, f"order {order:.2f} fitted from the printed errors {errors} is not about 2"
    assert "order fitted from the kdpm2 errors" in out


def test_demo_calls_and_order_from_its_result(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo.run((16, 32, 64), points=500, compare=False)
    assert [result.calls(n) for n in result.step_counts] == [31, 63, 127]
    assert abs(result.order() - 2) < 0.35, result.errors
    assert result.reference_accuracy < 1e-3 * min(result.errors["kdpm2"]), "the reference must be far more accurate"


def test_demo_matches_k_diffusion_and_diffusers(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("diffusers")
    pytest.importorskip("k_diffusion")
    result = demo.run((4, 8), points=200)
    assert set(result.errors) == {"kdpm2", "k-diffusion", "diffusers"}, result.missing
    ours = np.array(result.errors["kdpm2"])
    # The loop reads each call's sigma from the public float32 tables (as diffusers keeps them), so the
    # denoiser sees sigmas rounded to float32; k-diffusion gets the float64 array itself.
    np.testing.assert_allclose(result.errors["k-diffusion"], ours, rtol=1e-5)
    np.testing.assert_allclose(result.errors["diffusers"], ours, rtol=1e-5)


def test_demo_writes_the_figure(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    status, out, _ = run_cli(
        capsys, "demo", "--steps", "2", "4", "--points", "64", "--no-compare", "--out", str(tmp_path)
    )
    assert status == 0
    figure = tmp_path / "kdpm2-demo.png"  # type: ignore[operator]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {figure}" in out


def test_demo_without_matplotlib(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    status, out, _ = run_cli(capsys, "demo", "--steps", "2", "3", "--points", "16", "--no-compare", "--out", "unused")
    assert status == 0
    assert "matplotlib is not installed: no figure (pip install matplotlib)" in out.splitlines()


def test_mixture_denoiser_is_the_posterior_mean() -> None:
    """The closed form against a Monte-Carlo-free check: weights from densities, per component."""
    import torch

    data = demo.Mixture.ring(components=3, radius=1.0, std=0.3)
    x = torch.tensor([[0.2, -0.4], [1.5, 0.1]], dtype=torch.float64)
    sigma = 0.7
    var = data.stds**2 + sigma**2
    density = data.weights * torch.exp(-((x[:, None, :] - data.means) ** 2).sum(-1) / (2 * var)) / (2 * np.pi * var)
    w = density / density.sum(1, keepdim=True)
    posterior = (data.stds[:, None] ** 2 * x[:, None, :] + sigma**2 * data.means) / var[:, None]
    torch.testing.assert_close(data.denoise(x, sigma), (w[..., None] * posterior).sum(1))


# -- schedule ----------------------------------------------------------------------------------

CONFIGS = [
    (["--steps", "10"], {}, 10),
    (["--steps", "7", "--use-karras-sigmas"], {"use_karras_sigmas": True}, 7),
    (
        ["--steps", "50", "--use-karras-sigmas", "--round-karras-timesteps"],
        {"use_karras_sigmas": True, "round_karras_timesteps": True},
        50,
    ),
    (
        ["--steps", "9", "--timestep-spacing", "leading", "--steps-offset", "1"],
        {"timestep_spacing": "leading", "steps_offset": 1},
        9,
    ),
    (["--steps", "61", "--timestep-spacing", "trailing"], {"timestep_spacing": "trailing"}, 61),
    (
        [
            "--steps",
            "12",
            "--use-exponential-sigmas",
            "--sigma-min",
            "0.03",
            "--sigma-max",
            "14.6",
            "--prediction-type",
            "v_prediction",
        ],
        {"use_exponential_sigmas": True, "sigma_min": 0.03, "sigma_max": 14.6, "prediction_type": "v_prediction"},
        12,
    ),
    (
        ["--steps", "20", "--sigma-interpolation", "log", "--discard-penultimate-sigma", "--quantize-timesteps"],
        {"sigma_interpolation": "log", "discard_penultimate_sigma": True, "quantize_timesteps": True},
        20,
    ),
    (
        [
            "--steps",
            "8",
            "--beta-schedule",
            "scaled_linear",
            "--beta-start",
            "0.001",
            "--beta-end",
            "0.02",
            "--num-train-timesteps",
            "500",
        ],
        {"beta_schedule": "scaled_linear", "beta_start": 0.001, "beta_end": 0.02, "num_train_timesteps": 500},
        8,
    ),
    (
        ["--steps", "6", "--s-churn", "1.5", "--s-tmin", "0.1", "--s-tmax", "10", "--s-noise", "1.003"],
        {"s_churn": 1.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.003},
        6,
    ),
    (["--steps", "5", "--no-use-karras-sigmas", "--prediction-type", "sample"], {"prediction_type": "sample"}, 5),
]


@pytest.mark.parametrize(("argv", "config", "steps"), CONFIGS)
def test_schedule_json_equals_the_scheduler_tables(
    capsys: pytest.CaptureFixture[str], argv: list[str], config: dict, steps: int
) -> None:
    status, out, err = run_cli(capsys, "schedule", *argv, "--json")
    assert status == 0, err
    got = json.loads(out)
    assert out == json.dumps(got, indent=2) + "\n", "--json prints indented JSON"
    scheduler = KDPM2DiscreteScheduler(**config)
    scheduler.set_timesteps(steps)
    assert got["timesteps"] == scheduler.timesteps.tolist()
    assert got["sigmas"] == scheduler.sigmas.tolist()
    assert got["sigmas_interpol"] == scheduler.sigmas_interpol.tolist()
    public = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}  # which were given differs
    assert {k: v for k, v in got["config"].items() if k != "_use_default_values"} == json.loads(json.dumps(public))
    assert got["num_inference_steps"] == scheduler.num_inference_steps
    assert len(got["calls"]) == len(got["timesteps"])


def test_schedule_custom_sigmas_and_timesteps(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, kwargs in (
        (["--sigmas", "14.6,3,0.5,0"], {"sigmas": [14.6, 3, 0.5, 0]}),
        (["--timesteps", "999,500,20"], {"timesteps": [999, 500, 20]}),
    ):
        status, out, err = run_cli(capsys, "schedule", *argv, "--json")
        assert status == 0, err
        scheduler = KDPM2DiscreteScheduler()
        scheduler.set_timesteps(**kwargs)
        got = json.loads(out)
        assert got["timesteps"] == scheduler.timesteps.tolist(), argv
        assert got["sigmas"] == scheduler.sigmas.tolist(), argv


def test_schedule_trained_betas_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    betas = np.linspace(1e-4, 0.02, 100).tolist()
    path = tmp_path / "betas.json"  # type: ignore[operator]
    path.write_text(json.dumps(betas))
    status, out, err = run_cli(
        capsys, "schedule", "--steps", "4", "--num-train-timesteps", "100", "--trained-betas", str(path), "--json"
    )
    assert status == 0, err
    scheduler = KDPM2DiscreteScheduler(num_train_timesteps=100, trained_betas=betas)
    scheduler.set_timesteps(4)
    assert json.loads(out)["sigmas"] == scheduler.sigmas.tolist()


def test_schedule_table_has_one_row_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "schedule", "--steps", "4", "--use-karras-sigmas")
    assert status == 0
    scheduler = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(4)
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == list(range(7))
    assert [int(r[1]) for r in rows] == [1, 2, 1, 2, 1, 2, 1]
    np.testing.assert_allclose([float(r[2]) for r in rows], scheduler.timesteps.numpy(), rtol=1e-5)
    assert float(rows[-1][3]) == pytest.approx(float(scheduler.sigmas[-4]), rel=1e-5)
    assert float(rows[-1][4]) == 0


def test_every_constructor_argument_has_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "schedule", "--help")
    assert status == 0
    for name in KDPM2DiscreteScheduler._init_parameters():
        assert "--" + name.replace("_", "-") in out, name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedule", "--steps", "4", "--bogus"], "unrecognized arguments: --bogus"),
        (["schedule", "--steps", "0"], "must be at least 1"),
        (["schedule", "--steps", "four"], "expected a positive integer"),
        (["schedule"], "one of the arguments --steps --sigmas --timesteps is required"),
        (["schedule", "--steps", "4", "--prediction-type", "noise"], "invalid choice: 'noise'"),
        (["schedule", "--sigmas", "1,x"], "expected comma-separated numbers"),
        (["demo", "--steps", "1"], "argument --steps: must be at least 2, got 1"),
        (["demo", "--device", "nonsense"], "kdpm2: error: unknown device 'nonsense'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert message in err, err
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--steps", "4", "--sigma-min", "5", "--sigma-max", "1"],
            "sigma_min (5.0) must be smaller than sigma_max (1.0)",
        ),
        (["--steps", "4", "--use-karras-sigmas", "--use-exponential-sigmas"], "at most one may be True"),
        (["--timesteps", "900,100", "--use-karras-sigmas"], "timesteps cannot be combined"),
        (["--sigmas", "1,2,0"], "strictly decreasing"),
        (["--steps", "1001"], "num_inference_steps must be between 1 and 1000"),
    ],
)
def test_scheduler_errors_exit_2_with_kdpm2_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(capsys, "schedule", *argv)
    assert status == 2
    assert err.startswith("kdpm2: error: ") and message in err, err
    assert out == ""


def test_python_dash_m_kdpm2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kdpm2", "schedule", "--steps", "2"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "3 model calls" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "kdpm2", "schedule", "--steps", "2", "--beta-end", "-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("kdpm2: error: beta_end must be greater than 0.0")


def test_docs_cli_page_matches_the_parser() -> None:
    """docs/cli.md is generated from the parser; every option, value and help text must be current."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT.read_text() == module.reference(), "regenerate: python docs/scripts/cli_reference.py"


# -- argument plumbing -------------------------------------------------------------------------


def test_demo_arguments_reach_demo_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``kdpm2 demo`` option is passed to ``demo.main`` under its own name; defaults otherwise."""
    seen: list[dict] = []
    monkeypatch.setattr(demo, "main", lambda **kwargs: seen.append(kwargs))
    argv = ["demo", "--steps", "4", "2", "--points", "30", "--seed", "5", "--device", "cpu", "--no-compare"]
    assert run_cli(capsys, *argv, "--out", "figs")[0] == 0
    assert run_cli(capsys, "demo", "--no-plot")[0] == 0
    assert seen == [
        {"step_counts": [4, 2], "out": "figs", "points": 30, "seed": 5, "device": "cpu", "compare": False},
        {"step_counts": demo.STEP_COUNTS, "out": None, "points": 2000, "seed": 0, "device": None, "compare": True},
    ]


def test_schedule_json_rows_and_initial_noise(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON's per-call rows read the scheduler's tables; its init_noise_sigma is the scheduler's."""
    status, out, err = run_cli(capsys, "schedule", "--steps", "3", "--timestep-spacing", "leading", "--json")
    assert status == 0, err
    got = json.loads(out)
    s = KDPM2DiscreteScheduler(timestep_spacing="leading")
    s.set_timesteps(3)
    assert got["init_noise_sigma"] == float(s.init_noise_sigma)
    sigmas, interpol = s.sigmas.tolist(), s.sigmas_interpol.tolist()
    want = [
        {"call": 0, "order": 1, "timestep": s.timesteps[0].item(), "sigma": sigmas[0], "to_sigma": interpol[1]},
        {"call": 1, "order": 2, "timestep": s.timesteps[1].item(), "sigma": interpol[1], "to_sigma": sigmas[1]},
        {"call": 2, "order": 1, "timestep": s.timesteps[2].item(), "sigma": sigmas[2], "to_sigma": interpol[3]},
        {"call": 3, "order": 2, "timestep": s.timesteps[3].item(), "sigma": interpol[3], "to_sigma": sigmas[3]},
        {"call": 4, "order": 1, "timestep": s.timesteps[4].item(), "sigma": sigmas[4], "to_sigma": interpol[5]},
    ]
    assert got["calls"] == want
    assert want[-1]["to_sigma"] == 0.0


def test_schedule_table_header(capsys: pytest.CaptureFixture[str]) -> None:
    """The table starts with the step and call counts and the initial noise, then the column names."""
    status, out, _ = run_cli(capsys, "schedule", "--steps", "2", "--timestep-spacing", "leading")
    assert status == 0
    s = KDPM2DiscreteScheduler(timestep_spacing="leading")
    s.set_timesteps(2)
    first, second, *rows = out.splitlines()
    assert first == f"2 steps, 3 model calls, init_noise_sigma {float(s.init_noise_sigma):.6g}"
    assert second.split() == ["call", "order", "timestep", "sigma", "to", "sigma"]
    assert len(rows) == 3 and all(len(r) == len(second) for r in rows), "columns are aligned"


def test_trained_betas_file_formats_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    """Betas files may be whitespace- or comma-separated; an unreadable file names itself."""
    betas = np.linspace(1e-4, 0.02, 20)
    want = KDPM2DiscreteScheduler(num_train_timesteps=20, trained_betas=betas)
    want.set_timesteps(3)
    for name, text in (("lines.txt", "\n".join(map(repr, betas)) + "\n"), ("commas.txt", ", ".join(map(repr, betas)))):
        path = tmp_path / name  # type: ignore[operator]
        path.write_text(text)
        argv = ["schedule", "--steps", "3", "--num-train-timesteps", "20", "--trained-betas", str(path), "--json"]
        status, out, err = run_cli(capsys, *argv)
        assert status == 0, err
        assert json.loads(out)["sigmas"] == want.sigmas.tolist(), name
    missing = tmp_path / "absent.json"  # type: ignore[operator]
    status, _, err = run_cli(capsys, "schedule", "--steps", "3", "--trained-betas", str(missing))
    assert status == 2
    assert f"cannot read '{missing}': No such file or directory" in err


def test_number_lists_allow_spaces_and_a_trailing_comma(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sigmas 14.6, 3, 0`` and ``--sigmas 14.6,3,0,`` are the same list."""
    outs = []
    for text in ("14.6, 3, 0", "14.6,3,0,"):
        status, out, err = run_cli(capsys, "schedule", "--sigmas", text, "--json")
        assert status == 0, err
        outs.append(json.loads(out)["sigmas"])
    assert outs[0] == outs[1]
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(sigmas=[14.6, 3.0, 0.0])
    assert outs[0] == s.sigmas.tolist()


def test_option_type_of_an_untyped_argument_is_text() -> None:
    """A constructor argument with a default of no known type becomes a text option showing that default."""
    import inspect

    parameter = inspect.Parameter("label", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="abc")
    assert cli._option_type("label", parameter) == {"type": str, "help": "(default: abc)"}
