"""How many assertions each test file makes: to show that a faster suite asserts no less.

    .venv/bin/python bench/count_asserts.py [tests]

Counts, per file, the test functions, ``assert`` statements, ``assert_*()`` calls
(numpy.testing and the like) and ``pytest.raises`` / ``pytest.warns`` blocks, from the
source's syntax tree (a comment or a string that says "assert" is not counted).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

COLUMNS = ("tests", "assert", "assert_*()", "raises")


def assertion_counts(source: str) -> tuple[int, int, int, int]:
    """(test functions, assert statements, assert_* calls, raises/warns calls) in one file's source."""
    tests = statements = calls = raises = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            statements += 1
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            tests += 1
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            calls += name.startswith("assert_")
            raises += name in ("raises", "warns")
    return tests, statements, calls, raises


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "tests")
    total = [0] * len(COLUMNS)
    print(f"| file | {' | '.join(COLUMNS)} |\n|---|{'---:|' * len(COLUMNS)}")
    for path in sorted(root.glob("test_*.py")):
        counts = assertion_counts(path.read_text())
        total = [t + c for t, c in zip(total, counts)]
        print(f"| {path.name} | {' | '.join(map(str, counts))} |")
    print(f"| total | {' | '.join(map(str, total))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
