"""The release gate: pure checks of held-out test metrics before a model is released.

Each check is a plain dict {name, passed, metric, value, threshold | other, margin, detail}.
`margin` is signed in the metric's units: how far the model is on the good side of the
line (negative: how much it is short), so "refused, accuracy short by 0.0312" needs no
arithmetic from the reader. Nothing here reads files or trains; pipeline.py gathers the
numbers and registry.py releases.
"""

from __future__ import annotations

from typing import Any, Literal

from lmtune.config_ops import GateConfig
from lmtune.errors import UserError

Mode = Literal["max", "min"]
# Metric names where lower is better: what gate.mode auto picks "min" for.
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "ece")
# Metrics that baselines.json rows carry (what require_beat_baseline can compare).
BASELINE_METRICS = ("accuracy", "macro_f1")
ZERO_SHOT = "zero-shot"


def resolve_metric(gate: GateConfig, early_metric: str, early_mode: Mode) -> tuple[str, Mode]:
    """(metric, mode) the gate judges: gate.metric/mode, defaulting to the early-stopping pair."""
    if gate.metric is None:
        return early_metric, (early_mode if gate.mode == "auto" else gate.mode)
    if gate.mode != "auto":
        return gate.metric, gate.mode
    return gate.metric, ("min" if gate.metric.lower().endswith(LOWER_IS_BETTER) else "max")


def metric_key(metrics: dict[str, Any], metric: str) -> str | None:
    """The key of `metric` in metrics, allowing an optional eval_ prefix either way."""
    bare = metric.removeprefix("eval_")
    for key in (metric, bare, f"eval_{bare}"):
        if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool):
            return key
    return None


def pick_metric(metrics: dict[str, Any], metric: str, where: str) -> float:
    """metrics[metric] as a float; UserError naming the metrics that exist when it is absent."""
    key = metric_key(metrics, metric)
    if key is None:
        have = (
            ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
            or "none"
        )
        raise UserError(
            f"gate.metric '{metric}' is not among the metrics of {where} ({have}); "
            "set gate.metric to one of them"
        )
    return float(metrics[key])


def _better_by(value: float, other: float, mode: Mode) -> float:
    """How much better value is than other (negative: worse), in metric units."""
    return value - other if mode == "max" else other - value


def threshold_check(metric: str, mode: Mode, value: float, threshold: float) -> dict[str, Any]:
    """value must reach threshold: >= for mode max, <= for mode min (equality passes)."""
    margin = _better_by(value, threshold, mode)
    op = ">=" if mode == "max" else "<="
    passed = margin >= 0
    detail = (
        f"test {metric} {value:.4f} {op} {threshold:.4f} (margin {margin:+.4f})"
        if passed
        else f"test {metric} {value:.4f} is not {op} {threshold:.4f}: short by {-margin:.4f}"
    )
    return {
        "name": "threshold",
        "passed": passed,
        "metric": metric,
        "mode": mode,
        "value": value,
        "threshold": threshold,
        "margin": margin,
        "detail": detail,
    }


def beat_check(
    name: str,
    metric: str,
    mode: Mode,
    value: float,
    other: float,
    other_label: str,
    min_improvement: float = 0.0,
) -> dict[str, Any]:
    """value must be better than other by at least min_improvement (0: a tie passes)."""
    gain = _better_by(value, other, mode)
    margin = gain - min_improvement
    passed = margin >= 0
    need = f" by at least {min_improvement:.4f}" if min_improvement > 0 else ""
    if passed:
        how = f"better by {gain:+.4f}{need}" if gain else "a tie (min_improvement 0 lets it pass)"
        detail = f"test {metric} {value:.4f} vs {other_label} {other:.4f}: {how}"
    else:
        detail = (
            f"test {metric} {value:.4f} does not beat {other_label} {other:.4f}{need}: "
            f"short by {-margin:.4f}"
        )
    return {
        "name": name,
        "passed": passed,
        "metric": metric,
        "mode": mode,
        "value": value,
        "other": other,
        "other_name": other_label,
        "min_improvement": min_improvement,
        "margin": margin,
        "detail": detail,
    }


def zero_shot_metrics(baselines: dict[str, Any] | None) -> dict[str, Any]:
    """The zero-shot row of a baselines report (summary["baselines"] or baselines.json)."""
    rows = (baselines or {}).get("rows") or []
    row = next((r for r in rows if r.get("method") == ZERO_SHOT), None)
    if row is None:
        raise UserError(
            "gate.require_beat_baseline is on but the run has no zero-shot baseline "
            "(baselines.json); set baselines.enabled: true (task classification)"
        )
    return row


def baseline_check(
    metric: str, mode: Mode, value: float, baselines: dict[str, Any] | None, min_improvement: float
) -> dict[str, Any]:
    """The fine-tuned model against the base model's zero-shot score on the same test rows."""
    row = zero_shot_metrics(baselines)
    other = pick_metric(row, metric, "the zero-shot baseline (baselines.json)")
    return beat_check(
        "beat_baseline", metric, mode, value, other, "the zero-shot baseline", min_improvement
    )


def current_check(
    metric: str,
    mode: Mode,
    value: float,
    current: dict[str, Any] | None,
    min_improvement: float,
    test_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model against the registry's current release, whose metrics.json is `current`.

    current is None when nothing is released yet: the check passes with a note. When both
    sides recorded a fingerprint of their test data and they differ, a note says so.
    """
    if current is None:
        return {
            "name": "beat_current",
            "passed": True,
            "metric": metric,
            "mode": mode,
            "value": value,
            "other": None,
            "other_name": "the current release",
            "margin": None,
            "detail": "no current release in the registry: nothing to beat",
        }
    version = current.get("version", "current")
    test = current.get("test") if isinstance(current.get("test"), dict) else current
    other = pick_metric(test, metric, f"the current release {version} (its metrics.json)")
    check = beat_check(
        "beat_current",
        metric,
        mode,
        value,
        other,
        f"the current release {version}",
        min_improvement,
    )
    theirs = current.get("test_data")
    if test_data and isinstance(theirs, dict) and theirs.get("sha256") != test_data.get("sha256"):
        check["note"] = (
            f"{version} was tested on other test data ({theirs.get('rows')} rows vs "
            f"{test_data.get('rows')} now); the two numbers are not measured on the same rows"
        )
    return check


def evaluate_gate(
    gate: GateConfig,
    metric: str,
    mode: Mode,
    test: dict[str, Any],
    baselines: dict[str, Any] | None = None,
    current: dict[str, Any] | None = None,
    test_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every configured check on the test metrics; the decision passes when all of them pass."""
    if not test:
        raise UserError(
            "the gate needs test metrics, but the run evaluated no test rows; set "
            "data.test (a file) or data.split.test (e.g. 0.2)"
        )
    value = pick_metric(test, metric, "the test split (eval.json)")
    checks = []
    if gate.threshold is not None:
        checks.append(threshold_check(metric, mode, value, gate.threshold))
    if gate.require_beat_baseline:
        checks.append(baseline_check(metric, mode, value, baselines, gate.min_improvement))
    if gate.require_beat_current:
        checks.append(current_check(metric, mode, value, current, gate.min_improvement, test_data))
    if not checks:
        raise UserError(
            "the gate has no condition: set gate.threshold, or turn on "
            "gate.require_beat_baseline or gate.require_beat_current"
        )
    return {
        "passed": all(c["passed"] for c in checks),
        "metric": metric,
        "mode": mode,
        "value": value,
        "checks": checks,
        "failed": [c["name"] for c in checks if not c["passed"]],
    }


def gate_markdown(
    decision: dict[str, Any], run_dir: str, released: dict[str, Any] | None = None
) -> str:
    """gate.md: the decision, one table row per check, then what failed and by how much."""
    verdict = "PASSED" if decision["passed"] else "REFUSED"
    lines = [
        f"# Release gate: {verdict}",
        "",
        f"- run: `{run_dir}`",
        f"- metric: test {decision['metric']} = {decision['value']:.4f} "
        f"({'higher' if decision['mode'] == 'max' else 'lower'} is better)",
    ]
    if released:
        lines.append(f"- released: {released['version']} at `{released['path']}`")
    elif not decision["passed"]:
        lines.append("- nothing was released")
    return "\n".join([*lines, "", *checks_markdown(decision)]) + "\n"


def checks_markdown(decision: dict[str, Any]) -> list[str]:
    """The checks as a markdown table, then one line each saying what passed or failed by how much."""
    lines = ["| check | result | value | against | margin |", "|---|---|---|---|---|"]
    for c in decision["checks"]:
        against = c.get("threshold", c.get("other"))
        margin = "-" if c["margin"] is None else f"{c['margin']:+.4f}"
        lines.append(
            f"| {c['name']} | {'pass' if c['passed'] else 'FAIL'} | {c['value']:.4f} | "
            f"{'-' if against is None else f'{against:.4f}'} | {margin} |"
        )
    lines.append("")
    for c in decision["checks"]:
        lines.append(f"- {'passed' if c['passed'] else 'FAILED'} {c['name']}: {c['detail']}")
        if c.get("note"):
            lines.append(f"  - note: {c['note']}")
    return lines
