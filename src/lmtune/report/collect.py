"""Read what a run folder (`lmtune train`) or an eval folder (`lmtune eval`) holds.

Every file is optional: a report shows what is there. Damaged JSON lines (the last line of
a killed run's metrics.jsonl) are skipped rather than failing the whole report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import UserError

#: Optional result files other stages write beside eval.json (also looked up in summary.json).
EXTRA_RESULTS = ("baselines", "forgetting", "audit")


@dataclass
class Folder:
    """Everything a report or model card reads from one run or eval folder."""

    root: Path
    kind: str  # "run" or "eval"
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    train_events: list[dict[str, Any]] = field(default_factory=list)
    eval_events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    qa_predictions: Any = None
    data_report: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)  # samples.json (causal runs)

    @property
    def task(self) -> str:
        """The task name, from the model metadata or the config ('' when unknown)."""
        return str(self.meta.get("task") or self.config.get("task") or "")

    @property
    def name(self) -> str:
        """A title for the report: the run name, else the folder name (never the default "run")."""
        names = (self.meta.get("run_name"), (self.config.get("run") or {}).get("name"))
        return str(next((n for n in names if n and n != "run"), None) or self.root.name)


def read_json(path: Path) -> Any:
    """Parsed JSON of a file, or None when it is absent or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file (at most `limit`); bad or non-object lines are skipped."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
                if limit is not None and len(out) >= limit:
                    break
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def by_step(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events in step order, one per step: a resumed run logs the steps after its last
    checkpoint twice, and the later entry is the one that counts."""
    last = {e.get("step"): e for e in events if isinstance(e.get("step"), (int, float))}
    return [last[s] for s in sorted(last)]


def model_dir_of(folder: Folder) -> Path | None:
    """The saved model a folder describes: RUN/model (or RUN/best), or eval.json's model."""
    candidates = [folder.root / "model", folder.root / "best"]
    if folder.eval.get("model"):
        candidates.insert(0, Path(str(folder.eval["model"])))
    return next((c for c in candidates if (c / "lmtune_model.json").is_file()), None)


def load_folder(path: str | Path) -> Folder:
    """Read a run or eval folder; UserError when it holds none of the files lmtune writes."""
    root = Path(path)
    summary = _dict(read_json(root / "summary.json"))
    ev = _dict(read_json(root / "eval.json"))
    is_run = bool(summary) or (root / "metrics.jsonl").is_file() or (root / "config.yaml").is_file()
    if not is_run and not ev:
        raise UserError(
            f"{root} is neither a run folder (summary.json, metrics.jsonl, config.yaml) "
            "nor an eval folder (eval.json); pass the output_dir of `lmtune train` or "
            "the --out folder of `lmtune eval`"
        )
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        try:
            config = _dict(yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")))
        except yaml.YAMLError:
            config = {}
    events = read_jsonl(root / "metrics.jsonl")
    folder = Folder(
        root=root,
        kind="run" if is_run else "eval",
        config=config,
        summary=summary,
        eval=ev,
        train_events=by_step([e for e in events if e.get("event") == "train"]),
        eval_events=by_step([e for e in events if e.get("event") == "eval"]),
        errors=read_jsonl(root / "errors.jsonl"),
        predictions=read_jsonl(root / "predictions.jsonl"),
        qa_predictions=read_json(root / "predictions.json"),
        data_report=_dict(read_json(root / "data_report.json")),
        samples=_dict(read_json(root / "samples.json")),
    )
    model_dir = model_dir_of(folder)
    if model_dir is not None:
        folder.meta = _dict(read_json(model_dir / "lmtune_model.json"))
        if not folder.config and folder.kind == "eval":
            # An eval folder of a run's model: the run's config says how it was trained.
            cfg_path = model_dir.parent / "config.yaml"
            if cfg_path.is_file():
                try:
                    folder.config = _dict(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
                except yaml.YAMLError:
                    pass
    for name in EXTRA_RESULTS:
        # Beside eval.json, or where the stand-alone command writes it (`lmtune audit RUN`:
        # RUN/audit/audit.json); summary.json's copy (possibly shortened) is the last resort.
        found = read_json(root / f"{name}.json")
        if not isinstance(found, dict):
            found = read_json(root / name / f"{name}.json")
        if not isinstance(found, dict):
            found = summary.get(name)
        if isinstance(found, dict) and found:
            folder.extras[name] = found
    return folder


def is_count(key: str) -> bool:
    """Whether a metric is a count (examples, tokens, pairs, rows), not a measurement: counts
    are printed as integers and never plotted as metrics."""
    return key.endswith(("_examples", "_tokens", "_pairs", "_rows", "_total", "total")) or key in (
        "rows",
        "pairs",
        "examples",
        "tokens",
    )


def scalar_metrics(metrics: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The numeric entries of a metrics dict (booleans and bookkeeping keys left out)."""
    bookkeeping = {"step", "epoch", "time", "rows", "rejected", "split", *skip}
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in bookkeeping
    }


def headline(folder: Folder) -> tuple[str, dict[str, float]]:
    """(where the numbers come from, metrics): the test/eval file first, else the best eval."""
    if folder.eval:
        if folder.kind == "eval":
            where = f"data file {folder.eval.get('data', '(not recorded)')}"
        else:
            where = f"{folder.eval.get('split', 'test')} split"
        return where, scalar_metrics(folder.eval)
    best = folder.summary.get("best_eval")
    if isinstance(best, dict):
        what = "weight average up to step" if best.get("weight_average") else "best step"
        return f"eval split, {what} {best.get('step')}", scalar_metrics(best)
    if folder.eval_events:
        last = folder.eval_events[-1]
        return f"eval split, step {last.get('step')}", scalar_metrics(last)
    return "", {}


def weight_average_text(summary: dict[str, Any]) -> str | None:
    """One line on train.average: snapshots, its score, and whether it became the final model."""
    avg = summary.get("weight_average")
    if not isinstance(avg, dict):
        return None
    metric = summary.get("best_metric")
    value = avg.get(metric) if isinstance(metric, str) else None
    score = f", {metric} {value:.4f}" if isinstance(value, (int, float)) else ""
    verdict = (
        "kept as the final model"
        if avg.get("kept")
        else "not kept (a single snapshot scored higher)"
    )
    return (
        f"mean of {avg.get('snapshots')} snapshots, every {avg.get('every')} steps from step "
        f"{avg.get('from_step')}{score}: {verdict}"
    )
