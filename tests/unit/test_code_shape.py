"""The shape rules the codebase keeps (see the redesign issue): short functions, few positionals."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "labkit"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node


def test_no_function_is_50_lines_or_longer():
    long = [f"{name} ({node.end_lineno - node.lineno + 1} lines)" for name, node in _functions()
            if node.end_lineno - node.lineno + 1 >= 50]
    assert not long, long


def test_no_function_takes_more_than_6_positional_parameters():
    many = []
    for name, node in _functions():
        args = [a.arg for a in node.args.posonlyargs + node.args.args]
        if args and args[0] in ("self", "cls"):
            args = args[1:]
        if len(args) > 6:
            many.append(f"{name} ({len(args)})")
    assert not many, many


def test_nothing_follows_a_return_raise_break_or_continue_in_its_block():
    """Dead code reads as if it ran (a tidy once left a second copy of a check after `return`)."""
    dead = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list) and any(isinstance(s, ast.Return | ast.Raise | ast.Break | ast.Continue)
                                                   for s in block[:-1]):
                    dead.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not dead, dead
