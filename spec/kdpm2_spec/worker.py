"""Checks in a child process: a time limit per property, and a verdict that a hostile target cannot fake.

The command line and the pytest plugin never run a target in their own process. A ``Worker``
starts ``python -m kdpm2_spec.worker`` (with the parent's import path, and optionally a folder in
front of it: another installed release), which imports the target and answers requests, one JSON
line each, on a pipe of its own; whatever the target prints goes to standard error, never into
the report. The parent waits for each answer at most ``timeout`` seconds:

- a property that takes longer is an ``error`` ("no answer within N s"), the worker is killed
  and a new one checks the remaining properties;
- a worker that ends without answering (the target called ``os._exit``, crashed the interpreter,
  or closed the pipe) makes the property an ``error`` naming the exit status; ``sys.exit`` inside
  a check is caught in the worker and fails the case that called it.

So a verdict of 0 needs an answer for every property, and the summary is the parent's.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from kdpm2_spec.report import Result

TIMEOUTS = {"ci": 600.0, "dev": 600.0, "thorough": 3600.0}
"""Default time limit per property, in seconds, by Hypothesis profile (``--timeout`` overrides; 0: none)."""


class WorkerFailed(Exception):
    """The worker did not answer: ``timed_out`` says whether it ran out of time (else it ended)."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class WorkerUsage(Exception):
    """The worker could not start checking (the target does not load): a usage error, exit status 2."""


def child_env(paths: list[str], storage: str) -> dict[str, str]:
    """The child's environment: the parent's import path (``paths`` in front) and Hypothesis' storage."""
    entries = [*paths, *(p for p in sys.path if p)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in entries))
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = storage
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Worker:
    """A child process that has loaded one target and runs checks on request."""

    def __init__(self, init: dict[str, Any], paths: list[str] | None = None, timeout: float | None = None) -> None:
        self.init, self.paths, self.timeout = init, list(paths or []), timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.storage = tempfile.TemporaryDirectory(prefix="kdpm2-spec-")
        self.hello: dict[str, Any] = {}
        self._buffer = b""

    # -- process ----------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the child and load the target; returns its greeting (name, family, properties...)."""
        read, write = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kdpm2_spec.worker", str(write)],
                stdin=subprocess.PIPE,
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
                pass_fds=(write,),
                env=child_env(self.paths, self.storage.name),
                start_new_session=True,
            )
        finally:
            os.close(write)
        self._read_fd = read
        self._buffer = b""
        try:
            hello = self.request(self.init, self.timeout)
        except WorkerFailed as why:
            raise WorkerUsage(f"loading the target: {why}") from None
        if "usage" in hello:
            self.close()
            raise WorkerUsage(hello["usage"])
        self.hello = hello
        return hello

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the child (its whole process group) and release the pipe."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
            self.proc.wait()
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.proc = None
            os.close(self._read_fd)

    def shutdown(self) -> None:
        self.close()
        self.storage.cleanup()

    # -- requests ---------------------------------------------------------------------------------

    def request(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send one request and wait for its answer (``WorkerFailed`` when none comes)."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone: reading says how
        deadline = None if not timeout else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._read_fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.close()
                    raise WorkerFailed(f"no answer within {timeout:g} s (--timeout)", True)
                if not selector.select(left):
                    continue
                chunk = os.read(self._read_fd, 1 << 16)
                if not chunk:
                    status = self.proc.wait()
                    self.close()
                    raise WorkerFailed(f"the target ended the process (exit status {status}) without an answer", False)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    def ensure(self) -> None:
        """Start a new child if the last one was stopped."""
        if not self.alive():
            self.close()
            self.start()

    def check(self, name: str, timeout: float | None = None) -> Result:
        """Run property ``name``; an ``error`` result when the child runs out of time or ends."""
        self.ensure()
        try:
            answer = self.request({"op": "check", "name": name}, timeout if timeout is not None else self.timeout)
        except WorkerFailed as why:
            doc = self.hello.get("docs", {}).get(name, "")
            return Result(name, "error", doc, f"{why}; the other properties run in a new process")
        return Result.from_dict(answer["result"])

    def ask(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Any other request (``case``, ``probe``); ``WorkerFailed`` when no answer comes."""
        self.ensure()
        return self.request(message, timeout if timeout is not None else self.timeout)


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


# -- the child ------------------------------------------------------------------------------------


class _Session:
    """What the child knows: the target, the run's settings and its expectation."""

    def __init__(self, init: dict[str, Any]) -> None:
        from kdpm2_spec import conformance, gate, levels  # noqa: F401 - registers the properties
        from kdpm2_spec.__main__ import UsageError, load
        from kdpm2_spec.registry import Target

        self.settings = init
        try:
            cls = load(init["target"])
            self.target = Target.of(
                cls, init.get("device", "cpu"), init.get("dtype", "float64"), init["target"], init.get("family")
            )
        except (UsageError, ValueError) as error:
            raise _Refused(str(error)) from None
        data = init.get("expect")
        self.expect = None if data is None else gate.parse(data, init.get("expect_source", "expectations"))
        self.level = init.get("level", levels.DEFAULT)

    def hello(self) -> dict[str, Any]:
        t = self.target
        return {
            "name": t.name,
            "family": t.family,
            "properties": list(t.properties),
            "docs": {n: p.doc for n, p in t.properties.items()},
            "args": sorted(t.args),
            "set_timesteps_args": sorted(t.set_timesteps_args),
            "device": str(getattr(t.adapter, "device", "cpu")),
            "dtype": str(getattr(t.adapter, "dtype_name", "float64")),
        }

    def check(self, name: str) -> dict[str, Any]:
        from kdpm2_spec import runner

        s = self.settings
        try:
            result = runner.check_one(
                self.target, name, s.get("profile"), s.get("shrink", True), s.get("seed"), s.get("database"),
                self.expect, self.level, s.get("record", False),
            )  # fmt: skip
        except Exception as error:  # the harness itself must not crash on a broken class
            result = Result(name, "error", "", f"harness error: {runner.first_line(error)}")
        return {"result": result.as_dict()}

    def case(self, name: str, text: str) -> dict[str, Any]:
        """One reproducer: ``pass``, ``unsupported`` or ``fail`` with the message and findings."""
        from kdpm2_spec import levels, runner
        from kdpm2_spec.cases import parse_case
        from kdpm2_spec.discrepancy import findings_of
        from kdpm2_spec.registry import Unsupported
        from kdpm2_spec.signatures import Signature, features

        case = parse_case(text)
        with levels.measuring(self.level):
            try:
                runner.check_case(self.target, name, case)
            except Unsupported as why:
                return {"outcome": "unsupported", "message": str(why)}
            except SystemExit as exit_:
                return {"outcome": "fail", "message": f"the target called sys.exit({exit_.code!r})", "findings": []}
            except Exception as error:
                found = [str(Signature(name, f.what, f.kind, features(case))) for f in findings_of(error)]
                return {"outcome": "fail", "message": runner.first_line(error), "findings": found}
        return {"outcome": "pass"}

    def probe(self, text: str, options: dict[str, Any]) -> dict[str, Any]:
        from kdpm2_spec import differential

        return {"behaviour": differential.probe(self.target, text, options)}


class _Refused(Exception):
    pass


def serve(fd: int) -> None:
    """The child's loop: read requests on standard input, answer each on ``fd`` (one JSON line)."""
    out = os.fdopen(fd, "wb", buffering=0)

    def answer(data: dict[str, Any]) -> None:
        out.write((json.dumps(data, allow_nan=True) + "\n").encode())

    session: _Session | None = None
    from kdpm2_spec.runner import hypothesis_storage

    with hypothesis_storage(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")):
        for line in sys.stdin:
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "init":
                    session = _Session(request)
                    answer(session.hello())
                elif session is None:
                    answer({"usage": "the worker was not initialised"})
                elif op == "check":
                    answer(session.check(request["name"]))
                elif op == "case":
                    answer(session.case(request["name"], request["case"]))
                elif op == "probe":
                    answer(session.probe(request["case"], request.get("options", {})))
                else:
                    answer({"usage": f"unknown request {op!r}"})
            except _Refused as why:
                answer({"usage": str(why)})
            except SystemExit as exit_:  # outside a check (loading the target): the parent reports it
                answer({"usage": f"the target called sys.exit({exit_.code!r}) while loading"})
            except Exception as error:
                answer(
                    {"usage": f"{type(error).__name__}: {error}"}
                    if op == "init"
                    else {"error": f"{type(error).__name__}: {error}"}
                )


if __name__ == "__main__":
    serve(int(sys.argv[1]))
