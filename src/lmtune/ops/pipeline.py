"""`lmtune pipeline`: train, evaluate on held-out test data, gate, then release or refuse.

run_training already does prepare -> train with early stopping -> test evaluation ->
baselines / forgetting / bias audit / report when configured. This module adds what makes
it a release pipeline: checks before any training (so a misconfigured gate does not cost a
run), the gate on the test metrics (gate.py), and the release into the registry
(registry.py). RUN/gate.json and RUN/gate.md record the decision either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.ops import gate as gatelib
from lmtune.ops import registry as reg

GATE_JSON = "gate.json"
GATE_MD = "gate.md"


def gate_metric(cfg: Config) -> tuple[str, gatelib.Mode]:
    """(metric, mode) the gate of this config judges."""
    es = cfg.train.early_stopping
    return gatelib.resolve_metric(cfg.gate, es.metric, es.mode)


def preflight(cfg: Config) -> None:
    """Every gate problem visible before training, reported at once (UserError)."""
    g, problems = cfg.gate, []
    metric, _ = gate_metric(cfg)
    if cfg.data.test is None and cfg.data.split.test <= 0:
        problems.append(
            "the gate judges held-out test metrics, but the config has no test split: "
            "set data.test (a file) or data.split.test (e.g. 0.2)"
        )
    if g.threshold is None and not (g.require_beat_baseline or g.require_beat_current):
        problems.append(
            "the gate has no condition: set gate.threshold (e.g. 0.85), or turn on "
            "gate.require_beat_baseline or gate.require_beat_current"
        )
    if g.require_beat_baseline:
        if not cfg.baselines.enabled:
            problems.append(
                "gate.require_beat_baseline needs the zero-shot baseline: set baselines.enabled: true"
            )
        if metric.removeprefix("eval_") not in gatelib.BASELINE_METRICS:
            problems.append(
                f"gate.require_beat_baseline compares {' or '.join(gatelib.BASELINE_METRICS)}; "
                f"the gate metric is {metric} (set gate.metric)"
            )
    registry = Path(g.registry)
    if registry.exists() and not registry.is_dir():
        problems.append(f"gate.registry {registry} is a file; it must name a folder")
    elif registry.resolve() == Path(cfg.run.output_dir).resolve():
        problems.append(
            "gate.registry must not be the run folder (run.output_dir); use e.g. runs/registry"
        )
    elif registry.is_dir() and (problem := _registry_problem(registry)):
        problems.append(problem)
    elif g.require_beat_current:
        try:  # the current release must carry the same metric, or the comparison is meaningless
            current = reg.current_release(registry)
            if current is not None:
                gatelib.pick_metric(
                    current.get("test") or {},
                    metric,
                    f"the current release {current['version']} (its metrics.json)",
                )
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError(
            f"lmtune pipeline: {len(problems)} problem(s) with the gate:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _registry_problem(registry: Path) -> str | None:
    """Why the registry cannot take a release (an unreadable releases.jsonl, a broken
    `current`), found before training instead of after it."""
    try:
        reg.read_log(registry)
    except UserError as exc:
        return str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return f"{registry / reg.LOG_FILE} cannot be read ({exc}); repair or remove it"
    return reg.pointer_problem(registry)


def fingerprint_test_split(run_dir: Path) -> dict[str, Any] | None:
    """Rows and a hash of the run's test split (RUN/data/test.jsonl), independent of row order
    and of where the rows came from, so two releases can tell whether they saw the same test data."""
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append(
                json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, sort_keys=True)
            )
    digest = hashlib.sha256("\n".join(sorted(rows)).encode("utf-8")).hexdigest()
    return {"rows": len(rows), "sha256": digest}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_decision(run_dir: Path, decision: dict[str, Any]) -> None:
    (run_dir / GATE_JSON).write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    (run_dir / GATE_MD).write_text(
        gatelib.gate_markdown(decision, decision["run_dir"], decision.get("released")),
        encoding="utf-8",
    )


def release_metrics(
    cfg: Config, summary: dict[str, Any], decision: dict[str, Any], test_data: dict[str, Any] | None
) -> dict[str, Any]:
    """What VERSION/metrics.json records: the test metrics, the gate decision and their origin."""
    baselines = summary.get("baselines") or {}
    return {
        "run_dir": cfg.run.output_dir,
        "run_name": cfg.run.name,
        "task": cfg.task,
        "base_model": cfg.model.name_or_path,
        "metric": decision["metric"],
        "mode": decision["mode"],
        "value": decision["value"],
        "test": summary["test"],
        "test_data": test_data,
        "best_step": summary.get("best_step"),
        "baselines": baselines.get("rows"),
        "gate": {"passed": True, "checks": decision["checks"]},
    }


def metric_guard(metric: str) -> Callable[[int, dict[str, float]], None]:
    """An on_eval hook that stops training at the first evaluation when the task does not
    report the gate's metric (a typo in gate.metric must not cost a whole run)."""

    def check(step: int, metrics: dict[str, float]) -> None:
        gatelib.pick_metric(
            metrics, metric, f"the evaluation at step {step}"
        )  # UserError if absent

    return check


def card_section(cfg: Config, decision: dict[str, Any]) -> str:
    """The model card's Release section ({version} and {released_at} are filled in at release)."""
    merged = (
        f" The {cfg.adapter.type.upper()} adapter is merged into the base weights in this folder, "
        "so plain transformers loads it."
        if cfg.adapter.type in ("lora", "dora")
        else ""
    )
    better = "higher" if decision["mode"] == "max" else "lower"
    return "\n".join(
        [
            "## Release",
            "",
            f"Released as {{version}} at {{released_at}} by `lmtune pipeline` from the run "
            f"`{cfg.run.output_dir}`.{merged}",
            "",
            f"Release gate on the held-out test split: {decision['metric']} = {decision['value']:.4f} "
            f"({better} is better).",
            "",
            *gatelib.checks_markdown(decision),
        ]
    )


def _decide(
    cfg: Config, run_dir: Path, summary: dict[str, Any], metric: str, mode: gatelib.Mode
) -> dict[str, Any]:
    """The gate's decision on a trained run's test metrics (against its baselines and the
    current release when the gate asks), written to gate.json/gate.md in run_dir."""
    baselines = summary.get("baselines") or _read_json(run_dir / "baselines.json")
    current = reg.current_release(cfg.gate.registry) if cfg.gate.require_beat_current else None
    test_data = fingerprint_test_split(run_dir)
    decision = gatelib.evaluate_gate(
        cfg.gate, metric, mode, summary["test"], baselines, current, test_data
    )
    decision.update(
        run_dir=cfg.run.output_dir,
        registry=cfg.gate.registry,
        time=reg.now_iso(),
        test_data=test_data,
        released=None,
    )
    _write_decision(run_dir, decision)
    return decision


def run_pipeline(cfg: Config, quiet: bool = False) -> dict[str, Any]:
    """Train, gate on the test split, release when every check passes.

    Returns {"released": bool, "version", "path" (when released), "decision", "summary"}.
    A refusal is a normal result (the CLI turns it into exit code 3), not an exception.
    """
    from lmtune.train.run import run_training

    preflight(cfg)
    run_dir = Path(cfg.run.output_dir)
    for stale in (GATE_JSON, GATE_MD):  # a failed run must not leave an earlier run's decision
        (run_dir / stale).unlink(missing_ok=True)
    metric, mode = gate_metric(cfg)
    summary = run_training(cfg, quiet=quiet, on_eval=metric_guard(metric))
    if not summary.get("test"):
        raise UserError(
            f"the gate needs held-out test metrics, but {run_dir} evaluated no test rows "
            "(the test split is empty); give more data, raise data.split.test or set data.test"
        )
    decision = _decide(cfg, run_dir, summary, metric, mode)
    result: dict[str, Any] = {"released": False, "decision": decision, "summary": summary}
    if not decision["passed"]:
        return result
    return {**result, **_release(cfg, run_dir, summary, decision, decision["test_data"])}


def _release(
    cfg: Config,
    run_dir: Path,
    summary: dict[str, Any],
    decision: dict[str, Any],
    test_data: dict[str, Any] | None,
) -> dict[str, Any]:
    """Release the run's model into cfg.gate.registry; record the version in gate.json/md."""
    metric = decision["metric"]
    log = {
        "run_dir": cfg.run.output_dir,
        "metric": metric,
        "value": decision["value"],
        "checks": [{k: c.get(k) for k in ("name", "passed", "margin")} for c in decision["checks"]],
    }
    version, path = reg.release(
        cfg.gate.registry,
        summary["model_dir"],
        run_dir,
        release_metrics(cfg, summary, decision, test_data),
        log,
        card_section(cfg, decision),
    )
    decision["released"] = {"version": version, "path": str(path)}
    _write_decision(run_dir, decision)
    return {"released": True, "version": version, "path": path}


def release_run(run_dir: str | Path, registry: str | Path | None = None) -> dict[str, Any]:
    """`lmtune registry release RUN`: release a finished pipeline run whose gate passed,
    without training again (e.g. after losing a release race). The gate is evaluated again
    on the run's test metrics, because the current release may have changed since.

    Returns {"released": True, "version", "path"} or {"released": False, "reason"}.
    """
    from lmtune.config import load_config

    run_dir = Path(run_dir)
    gate_path, summary_path = run_dir / GATE_JSON, run_dir / "summary.json"
    for path, what in ((gate_path, "the gate's decision"), (summary_path, "its test metrics")):
        if not path.is_file():
            raise UserError(
                f"{path} is missing ({what}): {run_dir} is not a finished `lmtune pipeline` "
                "run; run the pipeline"
            )
    decision, summary = _read_json(gate_path) or {}, _read_json(summary_path) or {}
    if decision.get("released"):
        raise UserError(
            f"{run_dir} was already released as {decision['released']['version']} "
            f"({decision['released']['path']}); use `lmtune registry rollback` to make it current"
        )
    if not decision.get("passed"):
        return {"released": False, "reason": f"the gate refused this run; see {run_dir / GATE_MD}"}
    cfg = load_config(run_dir / "config.yaml", [])
    if registry is not None:
        cfg.gate.registry = str(registry)
    if Path(cfg.gate.registry).is_dir() and (problem := _registry_problem(Path(cfg.gate.registry))):
        raise UserError(problem)
    metric, mode = gate_metric(cfg)
    again = _decide(cfg, run_dir, summary, metric, mode)
    if not again["passed"]:
        return {
            "released": False,
            "reason": f"the gate no longer passes (against the current release); see "
            f"{run_dir / GATE_MD}",
        }
    summary.setdefault("model_dir", str(run_dir / "model"))
    return _release(cfg, run_dir, summary, again, again["test_data"])


def print_decision(decision: dict[str, Any], console: Any) -> None:
    """The gate's checks as a table, then one line per check (failed ones say by how much)."""
    from rich.table import Table

    table = Table(
        "check", "result", "value", "against", "margin", title=f"gate: test {decision['metric']}"
    )
    for c in decision["checks"]:
        against = c.get("threshold", c.get("other"))
        table.add_row(
            c["name"],
            "pass" if c["passed"] else "FAIL",
            f"{c['value']:.4f}",
            "-" if against is None else f"{against:.4f}",
            "-" if c["margin"] is None else f"{c['margin']:+.4f}",
        )
    console.print(table)
    for c in decision["checks"]:
        console.print(
            f"{'passed' if c['passed'] else 'FAILED'} {c['name']}: {c['detail']}", highlight=False
        )
        if c.get("note"):
            console.print(f"  note: {c['note']}", highlight=False)
