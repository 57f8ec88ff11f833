"""User errors on the command line: one line on stderr, exit status 2, no traceback, before any long work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers_cli import run_cli
from kdpm2 import KDPM2DiscreteScheduler, cli, demo


def assert_one_line_error(status: int, out: str, err: str, message: str, argv: tuple[str, ...]) -> None:
    assert status == 2, f"kdpm2 {' '.join(argv)}: exit status {status}, stderr {err!r}"
    assert err.endswith("\n") and err.count("\n") == 1, f"kdpm2 {' '.join(argv)}: not one line on stderr: {err!r}"
    assert "Traceback" not in err and message in err, f"kdpm2 {' '.join(argv)}: {err!r} lacks {message!r}"
    assert out == "", f"kdpm2 {' '.join(argv)} printed {out!r}"


@pytest.fixture
def files(tmp_path):
    """Paths the commands are pointed at: a file, a nested JSON, bad UTF-8 and NaN betas."""
    paths = {
        "file": tmp_path / "a-file",
        "nested": tmp_path / "nested.json",
        "latin1": tmp_path / "latin1.txt",
        "figure-dir": tmp_path / "out",
    }
    paths["file"].write_text("x")
    paths["nested"].write_text("[" * 100_000 + "]" * 100_000)
    paths["latin1"].write_bytes(b"0.1,\xff0.2")
    (paths["figure-dir"] / "kdpm2-demo.png").mkdir(parents=True)
    return {name: str(path) for name, path in paths.items()}


DEMO = ("demo", "--steps", "2", "--points", "8", "--no-compare")

CASES = [
    # kdpm2 demo: --out checked before the run
    ((*DEMO, "--out", ""), "--out must name a directory; got ''"),
    ((*DEMO, "--out", "{file}"), "is a file, not a directory"),
    ((*DEMO, "--out", "{file}/sub"), "is not a writable directory"),
    ((*DEMO, "--out", "/proc/kdpm2-out"), "is not a writable directory"),
    ((*DEMO, "--out", "{figure-dir}"), "is a directory; cannot write the figure there"),
    # kdpm2 demo: --device
    ((*DEMO, "--device", "meta"), "device must hold values; got 'meta'"),
    ((*DEMO, "--device", "mps"), "device 'mps' is not available"),
    ((*DEMO, "--device", "nonsense"), "unknown device 'nonsense'"),
    # kdpm2 demo: bounded work (a billion points asked for 16 GB and died in the allocator)
    (("demo", "--points", "1000000000", "--no-compare"), "--points: must be at most 1,000,000, got 1000000000"),
    (("demo", "--steps", "1000000000", "--no-compare"), "--steps: must be at most 10,000, got 1000000000"),
    (("demo", "--steps", "2", "99999999999999999999999", "--no-compare"), "--steps: must be at most 10,000"),
    # kdpm2 schedule: values outside the domain
    (("schedule", "--steps", "3", "--beta-start", "1e39"), "beta_start must be less than 1.0; got 1e+39"),
    (("schedule", "--steps", "3", "--beta-end", "0.2"), "give training sigmas outside"),
    (("schedule", "--steps", "3", "--beta-end", "nan"), "beta_end must be a finite real number"),
    (("schedule", "--sigmas", "1e39,1,0"), "sigmas must lie in"),
    (("schedule", "--steps", "3", "--num-train-timesteps", "10000000"), "num_train_timesteps must be between"),
    (("schedule", "--steps", "4", "--use-karras-sigmas", "--sigma-min", "100"), "sigma_min must be smaller"),
    # kdpm2 schedule --trained-betas: bounded, flat, UTF-8
    (("schedule", "--steps", "3", "--trained-betas", "{nested}"), "is nested too deeply"),
    (("schedule", "--steps", "3", "--trained-betas", "/dev/zero"), "is larger than 8388608 bytes"),
    (("schedule", "--steps", "3", "--trained-betas", "{latin1}"), "not UTF-8 text"),
    (("schedule", "--steps", "3", "--trained-betas", "{figure-dir}"), "cannot read"),
    # argparse's own errors are one line too
    (("schedule", "--steps", "4", "--bogus"), "unrecognized arguments: --bogus"),
    (("schedule", "--steps", "four"), "expected a positive integer"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_user_errors_are_one_line(capsys, monkeypatch, files, argv, message):
    """Each error is one line, and the demo's come before its run starts (the run is made to fail)."""

    def no_run(*args, **kwargs):
        raise AssertionError("the demo ran before its arguments were checked")

    monkeypatch.setattr(demo, "run", no_run)
    argv = tuple(arg.format(**files) for arg in argv)
    status, out, err = run_cli(capsys, *argv)
    assert_one_line_error(status, out, err, message, argv)


def test_out_checks_leave_no_file_behind(capsys, tmp_path):
    """Checking that --out is writable creates the directory the demo would create, and nothing in it."""
    out = tmp_path / "new" / "dir"
    status, _, err = run_cli(capsys, *DEMO, "--out", str(out), "--device", "mps")
    assert status == 2 and "mps" in err
    cli.check_out_directory(str(out))
    assert out.is_dir() and os.listdir(out) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_non_finite_tables_are_never_printed(capsys, monkeypatch, as_json):
    """The last line of defence: were a table ever NaN, neither the table nor --json would show it."""
    real = KDPM2DiscreteScheduler.set_timesteps

    def broken(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.sigmas = torch.full_like(self.sigmas, float("nan"))

    monkeypatch.setattr(KDPM2DiscreteScheduler, "set_timesteps", broken)
    argv = ("schedule", "--steps", "3", *(["--json"] if as_json else []))
    status, out, err = run_cli(capsys, *argv)
    assert_one_line_error(status, out, err, "non-finite values", argv)


def test_json_is_strict_json(capsys):
    status, out, err = run_cli(capsys, "schedule", "--steps", "3", "--json")
    assert status == 0, err
    json.loads(out, parse_constant=lambda name: pytest.fail(f"--json wrote {name}"))


def test_dash_m_kdpm2_error_has_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "kdpm2", "schedule", "--steps", "3", "--trained-betas", "/dev/zero"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "larger than" in done.stderr, done.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    """``kdpm2 schedule ... | head``: no BrokenPipeError traceback, exit status 141 (128 + SIGPIPE).

    The output (over 100 kB) outgrows the pipe's buffer, so the reader's close is always seen.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["schedule", "--steps", "1000"], ["schedule", "--steps", "1000", "--json"]):
        process = subprocess.Popen(
            [sys.executable, "-m", "kdpm2", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(10)  # like head: read a little, then go away
        process.stdout.close()
        err = process.stderr.read().decode()
        assert process.wait(timeout=120) == cli.BROKEN_PIPE, err
        assert err == "", f"kdpm2 {' '.join(argv)} | head wrote {err!r}"


def test_version(capsys) -> None:
    """``kdpm2 --version`` prints the package version and exits 0."""
    import kdpm2

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdpm2 {kdpm2.__version__}"
