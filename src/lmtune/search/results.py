"""What `lmtune tune` leaves in its output folder once the trials ran: trials.csv/json,
best.yaml (the best trial's config), plots/, search.json and report.html, and the trials table
on the console.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from lmtune.config import Config, dump_config
from lmtune.search.shared import redact
from lmtune.search.space import Param, decode, set_dotted, trial_config

console = Console()


def short_value(value: Any) -> str:
    """A searched value as a table cell: floats to 3 digits, lists as JSON."""
    return (
        f"{value:.3g}"
        if isinstance(value, float)
        else json.dumps(value)
        if isinstance(value, list)
        else str(value)
    )


def trial_row(t: Any, params: list[Param]) -> dict[str, Any]:
    """One trial as plain data (trials.json / trials.csv / the report)."""
    value = t.value
    if value is None and t.state.name == "PRUNED" and t.last_step is not None:
        value = t.intermediate_values[t.last_step]
    return {
        "number": t.number,
        "state": t.state.name,
        "value": value,
        "params": decode(t.params, params),
        "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
        "pruned_at_step": t.last_step if t.state.name == "PRUNED" else None,
        "rerun_of": t.user_attrs.get("rerun_of"),
        "run_dir": t.user_attrs.get("run_dir"),
        "eval": t.user_attrs.get("eval"),
    }


def write_trials(out: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """OUT/trials.json and OUT/trials.csv (one column per searched key)."""
    (out / "trials.json").write_text(json.dumps(rows, indent=2))
    fields = ["number", "state", "value", "duration_s", "pruned_at_step", "rerun_of", "run_dir"]
    with (out / "trials.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(fields + keys)
        for r in rows:
            cells = [r["params"].get(k) for k in keys]
            writer.writerow(
                [r[k] for k in fields]
                + [json.dumps(c) if isinstance(c, list) else c for c in cells]
            )


def write_best(out: Path, best: dict[str, Any], cfg: Config | None = None) -> Path:
    """OUT/best.yaml: the best trial's full config (as trained), writing to OUT/best_run.

    A trial another worker ran on another machine has no folder here: its config is this
    search's config with the trial's parameters (from the shared study)."""
    saved = Path(best["run_dir"]) / "config.yaml"
    if saved.is_file() or cfg is None:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    else:
        data = trial_config(cfg, best["params"], Path(best["run_dir"])).model_dump(mode="json")
    set_dotted(data, "run.output_dir", str(out / "best_run"))
    path = out / "best.yaml"
    path.write_text(
        f"# Best trial {best['number']} of `lmtune tune`: {best['metric']} = {best['value']}\n"
        f"# Train it with: lmtune train {path}\n" + dump_config(Config.model_validate(data))
    )
    return path


def param_importances(
    study: Any, params: list[Param]
) -> tuple[dict[str, float] | None, str | None]:
    """PED-ANOVA importances of the searched keys, or why there are none."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(params) < 2:
        return None, "parameter importance skipped: only one parameter is searched"
    if len(complete) < 2:
        return (
            None,
            f"parameter importance skipped: {len(complete)} completed trial(s), it needs 2 or more",
        )
    # PED-ANOVA runs on numpy alone (fANOVA, Optuna's default, needs scikit-learn).
    try:
        with warnings.catch_warnings():
            # "quantiles select the same trials" with few trials: the plot says it is a rough guide.
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    except (ValueError, RuntimeError) as exc:
        return None, f"parameter importance skipped: {exc}"
    return {k: float(v) for k, v in imp.items()}, None


def write_results(
    cfg: Config, study: Any, params: list[Param], wall_s: float, notes: list[str]
) -> dict[str, Any]:
    """trials.csv/json, best.yaml, plots/, search.json and report.html in OUT; returns the summary."""
    from lmtune.search import plots

    out, search = Path(cfg.run.output_dir), cfg.search
    keys = [p.key for p in params]
    rows = [trial_row(t, params) for t in study.get_trials(deepcopy=False)]
    write_trials(out, rows, keys)
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = None
    if complete:
        pick = max if search.direction == "maximize" else min
        row = pick(complete, key=lambda r: (r["value"], r["number"]))
        best = {**row, "metric": search.metric}
        best["config"] = str(write_best(out, best, cfg))
    importances, note = param_importances(study, params)
    notes = notes + ([note] if note else [])
    log_keys = {p.key for p in params if p.spec.log}
    figures = {
        "history": plots.history_plot(rows, search.metric, search.direction),
        "importance": plots.importance_plot(importances, search.metric) if importances else None,
        "slices": plots.slice_plot(rows, keys, log_keys, search.metric),
    }
    (out / "plots").mkdir(exist_ok=True)
    for name, png in figures.items():
        if png:
            (out / "plots" / f"{name}.png").write_bytes(png)
    counts = {
        s: sum(r["state"] == s for r in rows)
        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    }
    summary = {
        "metric": search.metric,
        "direction": search.direction,
        "sampler": search.sampler,
        "pruner": search.pruner.type,
        "n_trials": search.n_trials,
        "trials": len(rows),
        "states": {k: v for k, v in counts.items() if v},
        "best": best,
        "importances": importances,
        "wall_time_s": round(wall_s, 1),
        "study": redact(search.storage) if search.storage else str(out / "study.db"),
        "plots": [f"plots/{n}.png" for n, png in figures.items() if png],
        "notes": notes,
    }
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(
        plots.report_html(cfg.run.name, summary, rows, keys, figures), encoding="utf-8"
    )
    return summary


def print_table(summary: dict[str, Any], rows: list[dict[str, Any]], keys: list[str]) -> None:
    """The trials as a rich table, best first marked, then where the results are."""
    best = (summary.get("best") or {}).get("number")
    table = Table("trial", "state", summary["metric"], *keys, "time (s)", title="trials")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        style = (
            "bold green" if r["number"] == best else ("dim" if r["state"] != "COMPLETE" else None)
        )
        state = r["state"].lower() + (
            f" @{r['pruned_at_step']}" if r["pruned_at_step"] is not None else ""
        )
        table.add_row(
            str(r["number"]),
            state,
            value,
            *[short_value(r["params"].get(k, "")) for k in keys],
            "" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
            style=style,
        )
    console.print(table)
    for note in summary["notes"]:
        console.print(f"note: {note}", highlight=False)
    if summary.get("best"):
        console.print(
            f"best: trial {best}, {summary['metric']} {summary['best']['value']:.4f}; "
            f"config {summary['best']['config']}",
            highlight=False,
        )
