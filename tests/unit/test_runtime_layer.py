"""lmtune.runtime is the layer below tasks/, train/ and evaluate/: it never imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import lmtune.runtime

ABOVE = ("lmtune.tasks", "lmtune.train", "lmtune.evaluate")


def test_runtime_imports_nothing_from_the_layers_above() -> None:
    root = Path(lmtune.runtime.__file__).parent
    found = []
    for file in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{file.name}: {n}" for n in names if n.startswith(ABOVE)]
    assert {f.name for f in root.glob("*.py")} >= {"dist.py", "memory.py"}
    assert found == []
