"""The layering of lmtune's packages, read from the source with ast (no import side effects).

Lower layers never import upper ones, so no import cycle can form between them:
  losses/   pure functions: nothing of lmtune but losses/ itself
  runtime/  the process layer: never tasks/, train/, evaluate/ (nor anything above)
  tasks/    library: never train/, ops/, report/, search/, ui/, the CLI, or evaluate/'s
            commands (only its metric modules)
  data/, models/, config  never a task implementation (only the registry: lmtune.tasks and
            lmtune.tasks.spec), never train/, evaluate/, ops/, report/
  evaluate/ never train/
Every import counts, also the ones inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "lmtune"
# Re-exports that stand in until the process layer moves into runtime/ (the merge with the
# loop rework removes them): runtime/dist.py and runtime/memory.py re-export train/.
INTERIM: dict[str, set[str]] = {}  # module -> imports tolerated while code moves (none now)
REGISTRY = ("lmtune.tasks", "lmtune.tasks.spec")
METRICS = ("lmtune.evaluate.metrics", "lmtune.evaluate.calibration", "lmtune.evaluate.squad")
UPPER = ("lmtune.train", "lmtune.evaluate", "lmtune.ops", "lmtune.report", "lmtune.search")
APPS = ("lmtune.cli", "lmtune.ui", "lmtune.feedback", "lmtune.demo", "lmtune.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every lmtune module path imports (absolute names; `from a import b` counts a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "lmtune" or m.startswith("lmtune.")}


MODULES = {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(owner: tuple[str, ...], forbidden: tuple[str, ...], allowed=()) -> list[str]:
    bad = []
    for mod, deps in MODULES.items():
        if not _under(mod, owner):
            continue
        for dep in deps:
            if _under(dep, tuple(INTERIM.get(mod, ()))):
                continue
            if _under(dep, forbidden) and not _under(dep, tuple(allowed)):
                bad.append(f"{mod} imports {dep}")
    return sorted(bad)


def test_every_module_parsed() -> None:
    assert "lmtune.tasks.base" in MODULES and "lmtune.losses.dpo" in MODULES
    assert len(MODULES) > 50


def test_losses_import_only_losses() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in MODULES.items()
        if _under(m, ("lmtune.losses",))
        for d in deps
        if not _under(d, ("lmtune.losses",))
    ]
    assert bad == []


def test_runtime_is_below_tasks_train_evaluate() -> None:
    assert _violations(("lmtune.runtime",), ("lmtune.tasks", *UPPER, *APPS)) == []


def test_tasks_never_import_the_recipes_or_apps() -> None:
    forbidden = ("lmtune.train", "lmtune.evaluate", "lmtune.ops", "lmtune.report", *APPS)
    assert _violations(("lmtune.tasks",), forbidden, allowed=METRICS) == []


@pytest.mark.parametrize("layer", ["lmtune.data", "lmtune.models", "lmtune.config"])
def test_data_models_config_ask_only_the_registry(layer: str) -> None:
    sections = ("base", "model", "data", "train", "align", "eval", "ops")
    owner = (layer, *(f"lmtune.config_{m}" for m in sections))
    if layer != "lmtune.config":
        owner = (layer,)
    tasks = tuple(m for m in MODULES if _under(m, ("lmtune.tasks",)) and m not in REGISTRY)
    assert _violations(owner, (*tasks, *UPPER, *APPS)) == []


def test_evaluate_never_imports_train() -> None:
    assert _violations(("lmtune.evaluate",), ("lmtune.train", *APPS)) == []


def test_no_module_level_import_cycle() -> None:
    """Top-level imports between lmtune modules form no cycle (those run at import time)."""
    graph: dict[str, set[str]] = {}
    for p in SRC.rglob("*.py"):
        me = module_name(p)
        tree = ast.parse(p.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in tree.body:  # module level only; TYPE_CHECKING blocks never run
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[me] = {d for d in deps if d in MODULES and d != me}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return [*path, node, dep]
            if dep not in state and (cycle := visit(dep, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for mod in graph:
        if mod not in state:
            assert visit(mod, []) is None
