"""Cases as text: the ``repr`` a failure prints, parsed back as data (never executed).

A reproducer pasted from a CI log reaches ``python -m kdpm2_spec check ... --case TEXT``;
``parse_case`` reads it with ``ast`` and builds only literals (numbers, strings, ``None``,
booleans, lists, tuples, dicts), ``nan``/``inf``, and calls of a whitelist of constructors: the
case NamedTuples of ``kdpm2_spec.strategies``, ``linear_betas`` and NumPy's ``array`` and
scalar types, with literal arguments. Anything else (a name, an attribute, an operator, a call
of something else) is a ``ValueError`` naming what was refused.
"""

from __future__ import annotations

import ast
import math
import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

from kdpm2_spec import strategies as ks

_NUMPY_SCALARS = ("float64", "float32", "float16", "int64", "int32", "bool_")


def constructors() -> dict[str, Callable[..., Any]]:
    """The callables a case may name: every NamedTuple of the strategies (both families'), ``linear_betas``, NumPy's."""
    from kdpm2_spec import ancestral_invariants  # the ancestral family's cases (imported on use: it needs Hypothesis)

    allowed: dict[str, Callable[..., Any]] = {
        name: value
        for module in (ks, ancestral_invariants)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")
    }
    allowed["linear_betas"] = ks.linear_betas
    allowed["array"] = np.array
    for name in _NUMPY_SCALARS:
        allowed[f"np.{name}"] = getattr(np, name)
    return allowed


_NAMES = {"nan": math.nan, "inf": math.inf}


def _callee(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ast.unparse(node)


def _value(node: ast.expr, allowed: dict[str, Callable[..., Any]]) -> Any:
    """The value of one literal node (see the module docstring for what is literal)."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, allowed)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    elif isinstance(node, ast.List):
        return [_value(e, allowed) for e in node.elts]
    elif isinstance(node, ast.Tuple):
        return tuple(_value(e, allowed) for e in node.elts)
    elif isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k, allowed): _value(v, allowed) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    elif isinstance(node, ast.Call) and _callee(node.func) in allowed:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ValueError(f"--case: no * or ** arguments in {_callee(node.func)}(...)")
        args = [_value(a, allowed) for a in node.args]
        kwargs = {k.arg: _value(k.value, allowed) for k in node.keywords if k.arg is not None}
        try:
            return allowed[_callee(node.func)](*args, **kwargs)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--case: {_callee(node.func)}(...) rejects its arguments: {error}") from None
    elif isinstance(node, ast.Call):
        raise ValueError(f"--case may call only {', '.join(sorted(allowed))}; got a call of {_callee(node.func)!r}")
    raise ValueError(f"--case must be data (a case repr as printed in a report); {ast.unparse(node)!r} is not")


def parse_case(text: str) -> Any:
    """The case ``text`` (a case's ``repr``) describes, built without executing any code."""
    if len(text) > 100_000:
        raise ValueError(f"--case is {len(text)} characters long; a case repr is at most 100000")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as error:
        detail = error.msg if isinstance(error, SyntaxError) else str(error)
        raise ValueError(f"--case is not a case repr ({detail}): {text!r}") from None
    except RecursionError:
        raise ValueError("--case is nested too deeply") from None
    try:
        return _value(tree.body, constructors())
    except RecursionError:
        raise ValueError("--case is nested too deeply") from None


def shell_quote(text: str) -> str:
    """``text`` as one shell word: in double quotes when that needs no escapes (readable), else ``shlex.quote``."""
    if not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def reproducer(target: str, name: str, case: Any, options: str = "") -> str:
    """The command that re-checks property ``name`` of ``target`` on ``case`` alone."""
    extra = f" {options}" if options else ""
    return f"python -m kdpm2_spec check {target} --only {name}{extra} --case {shell_quote(repr(case))}"
