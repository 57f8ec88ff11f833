"""``--case`` is data: every printed case parses back to itself, and nothing in one is ever executed.

Also the one-line usage errors of ``python -m kdpm2_spec check`` (issue 11, items 10 and 11).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdpm2_spec import conformance
from kdpm2_spec.__main__ import main
from kdpm2_spec.cases import parse_case, reproducer, shell_quote
from kdpm2_spec.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def _targets() -> list[conformance.Target]:
    from kdpm2 import KDPM2DiscreteScheduler
    from kdpm2_spec import Reference

    found = [conformance.Target.of(KDPM2DiscreteScheduler), conformance.Target.of(Reference)]
    try:
        import diffusers
    except ImportError:
        return found
    return [*found, conformance.Target.of(diffusers.KDPM2DiscreteScheduler)]


def _ancestral_targets() -> list[conformance.Target]:
    from kdpm2 import KDPM2AncestralDiscreteScheduler

    found = [conformance.Target.of(KDPM2AncestralDiscreteScheduler)]
    try:
        import diffusers
    except ImportError:
        return found
    return [*found, conformance.Target.of(diffusers.KDPM2AncestralDiscreteScheduler)]


@pytest.mark.parametrize(
    ("family", "name"), [(family, name) for family in ("kdpm2", "ancestral") for name in FAMILIES[family].properties]
)
def test_every_printed_case_parses_back_to_itself(family: str, name: str) -> None:
    """Drawn cases of each property of both families (over kdpm2's, the reference's and diffusers' arguments)
    and its pinned ones: a reproducer printed for a DPM2 a class runs too."""
    prop = FAMILIES[family].properties[name]
    for pinned in prop.examples:
        assert parse_case(repr(pinned)) == pinned
    targets = _targets() if family == "kdpm2" else _ancestral_targets()

    @given(st.data())
    def round_trip(data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(targets))
        case = data.draw(prop.strategy(target))
        assert parse_case(repr(case)) == case
        command = reproducer(target.name, name, case, "--dtype float16 --seed 3")
        words = shlex.split(command)
        assert words[:4] == ["python", "-m", "kdpm2_spec", "check"] and words[-2] == "--case"
        assert parse_case(words[-1]) == case

    round_trip()


@given(st.text(max_size=40))
def test_shell_quote_is_one_shell_word(text: str) -> None:
    assert shlex.split(shell_quote(text)) == [text]


def test_numpy_values_and_special_floats_parse() -> None:
    import numpy as np

    assert parse_case("[np.float64(0.5), -inf, nan, array([1.0, 2.0])]")[0] == 0.5
    value = parse_case("Schedule(config={'sigma_min': np.float32(0.25)}, steps=+3)")
    assert value.steps == 3 and value.config["sigma_min"] == np.float32(0.25)


HOSTILE = [
    "__import__('os').system('echo hi')",
    "open('/etc/passwd').read()",
    "().__class__.__bases__[0].__subclasses__()",
    "Schedule.__init__",
    "Schedule(**{'config': {}, 'steps': 1})",
    "Schedule(config=__import__('os'), steps=1)",
    "np.load('x.npy')",
    "[x for x in (1, 2)]",
    "lambda: 0",
    "1 + 1",
    "'a' * 10",
    "Schedule",
    "exec",
    "{**{}}",
    "b'bytes'",
    "f'{1}'",
    "Schedule(config={}, steps=1, extra=2)",
    "linear_betas(1, 2)",
    "1+",
    "",
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: t[:40])
def test_anything_but_data_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="--case"):
        parse_case(text)


COMMANDS = [
    (["nonexistent:Thing"], "cannot import module 'nonexistent'"),
    (["os:Nope"], "module 'os' has no 'Nope'"),
    (["builtins:int"], "'builtins:int' is not a scheduler class: it has no set_timesteps, step, scale_model_input"),
    (["kdpm2:__version__"], "'kdpm2:__version__' is a str, not a scheduler class"),
    (["nocolon"], "expected MODULE:CLASS, got 'nocolon'"),
    (["kdpm2:KDPM2DiscreteScheduler", "--only", "churn", "--case", "1+"], "--case is not a case repr"),
    (
        ["kdpm2:KDPM2DiscreteScheduler", "--only", "churn", "--case", "__import__('os').system('echo hi')"],
        "--case may call only",
    ),
    (["kdpm2:KDPM2DiscreteScheduler", "--case", "None"], "--case needs exactly one --only NAME"),
    (["kdpm2:KDPM2DiscreteScheduler", "--only", "nope"], "unknown properties ['nope']"),
    (["kdpm2:KDPM2DiscreteScheduler", "--expect", "no-such-file.json"], "no such file, and no shipped expectation"),
    (["kdpm2:KDPM2DiscreteScheduler", "--json", "/no/such/dir/report.json"], "--json '/no/such/dir/report.json'"),
    (["kdpm2:KDPM2DiscreteScheduler", "--device", "bogus"], "device must be a torch device string"),
]


@pytest.mark.parametrize(("args", "message"), COMMANDS, ids=lambda a: " ".join(a)[-40:] if isinstance(a, list) else "")
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str, capfd: pytest.CaptureFixture[str]) -> None:
    status = main(["check", *args])
    out, err = capfd.readouterr()
    assert status == 2
    assert out == "", "nothing runs before the arguments are checked"
    assert err.count("\n") == 1 and err.startswith("python -m kdpm2_spec: error: ") and message in err, err


def test_bad_expectation_files_are_usage_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    for text, message in (
        ("[1, 2]", "must be a JSON object of property name -> reason"),
        ('{"tables_finite": 1}', "must be a JSON object of property name -> reason"),
        ('{"no_such_property": "x"}', "unknown properties ['no_such_property']"),
        ("{", "not JSON"),
    ):
        path = tmp_path / "expect.json"
        path.write_text(text)
        assert main(["check", "kdpm2:KDPM2DiscreteScheduler", "--expect", str(path)]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_a_hostile_case_never_runs_from_the_command_line(tmp_path: Path) -> None:
    """The command of issue 11 item 11, as a user would type it: exit 2, one line, and no file written."""
    marker = tmp_path / "pwned"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdpm2_spec",
            "check",
            "kdpm2:KDPM2DiscreteScheduler",
            "--only",
            "churn",
            "--case",
            f"__import__('os').system('echo hi > {marker}')",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'spec'}", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not marker.exists()
