"""`lmtune monitor`: record batches a released model sees, check them, report over time.

`record` scores a labelled batch (--data) or reads a serving log (--predictions), compares
its inputs with the training-data profile (ops/profile.py, ops/drift.py) and appends one row
to a SQLite history (default TARGET/monitor.db). `status` checks the latest records of the
current model version against the thresholds (config `monitor:` block, or --set) and
returns 1 when an alert fires, so cron or CI can act on it. `report` (ops/monitor_report.py)
writes report.html (plots embedded) and monitor.json. "Now" can be injected (--now or
LMTUNE_NOW) for tests.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmtune.config import MonitorConfig, apply_overrides
from lmtune.errors import UserError
from lmtune.ops.drift import compare
from lmtune.ops.monitor_checks import Check, run_checks
from lmtune.ops.profile import (
    batch_stats,
    read_json_file,
    read_prediction_log,
    read_profile,
    row_text,
)

NOW_ENV = "LMTUNE_NOW"
DB_NAME = "monitor.db"
SCHEMA_VERSION = 1
# No migrations: a database of another schema version is refused with a clear message.
SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,           -- ISO 8601, UTC
        model_version TEXT NOT NULL,  -- registry version name, or run name @ release time
        batch TEXT NOT NULL,          -- a name for the batch (default: the file's stem)
        kind TEXT NOT NULL,           -- labelled (--data) or predictions (--predictions)
        source TEXT NOT NULL,         -- the file that was recorded
        n INTEGER NOT NULL,           -- rows in the batch
        metrics TEXT NOT NULL,        -- JSON: task metrics ({} for a serving log)
        input_stats TEXT NOT NULL,    -- JSON: profile.batch_stats
        drift TEXT NOT NULL,          -- JSON: drift.compare against data_profile.json
        release TEXT NOT NULL         -- JSON: release time and metrics when recorded
    )""",
)
JSON_COLUMNS = ("metrics", "input_stats", "drift", "release")
RELEASE_TIME_KEYS = ("released_at", "release_time", "promoted_at", "created_at")


@dataclass
class Target:
    """The released model a monitor command is about, and where its history lives."""

    model_dir: Path
    version: str
    release_time: datetime
    release_time_source: str
    release_metrics: dict[str, float]
    release_metrics_source: str | None
    home: Path  # default folder of monitor.db and the report


def parse_time(raw: str, what: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (naive times are taken as UTC)."""
    try:
        t = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{what}: '{raw}' is not an ISO 8601 time (example: 2025-06-01T12:00:00Z)"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def parse_now(value: str | None = None) -> datetime:
    """--now, else $LMTUNE_NOW, else the clock: tests inject time to check the release age."""
    raw = value or os.environ.get(NOW_ENV)
    return parse_time(raw, "--now" if value else NOW_ENV) if raw else datetime.now(timezone.utc)


def _read_json(path: Path) -> dict[str, Any] | None:
    data = read_json_file(path, "restore or delete it")
    return data if isinstance(data, dict) else None


def _run_dir(model_dir: Path) -> Path | None:
    """The run folder around a run's model/ (None for a registry version or a loose folder)."""
    parent = model_dir.parent
    return (
        parent
        if model_dir.name in ("model", "best") and (parent / "config.yaml").is_file()
        else None
    )


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def release_metrics(model_dir: Path) -> tuple[dict[str, float], str | None]:
    """Release-time metrics: the registry's metrics.json, else the run's test (or best eval) metrics."""
    found = _read_json(model_dir / "metrics.json")
    if found is not None:
        inner = next(
            (found[k] for k in ("test", "metrics") if isinstance(found.get(k), dict)), found
        )
        return _numbers(inner), str(model_dir / "metrics.json")
    run = _run_dir(model_dir)
    if run is not None:
        ev = _read_json(run / "eval.json")
        if ev is not None:
            return _numbers(ev), str(run / "eval.json") + " (test split)"
        best = (_read_json(run / "summary.json") or {}).get("best_eval")
        if isinstance(best, dict):
            return _numbers(best), str(run / "summary.json") + " (best eval)"
    return {}, None


def release_time(model_dir: Path) -> tuple[datetime, str]:
    """When the model was released: a time in metrics.json, else when its profile was written,
    else when lmtune_model.json was written."""
    for name in ("metrics.json", "data_profile.json", "lmtune_model.json"):
        data = _read_json(model_dir / name) or {}
        for key in RELEASE_TIME_KEYS:
            if isinstance(data.get(key), str):
                return parse_time(data[key], f"{model_dir / name} {key}"), f"{name} {key}"
    mtime = (model_dir / "lmtune_model.json").stat().st_mtime
    return datetime.fromtimestamp(mtime, timezone.utc), "lmtune_model.json modification time"


def resolve_target(path: str | Path) -> Target:
    """A model folder, a run folder, or a registry (its `current` version) as a Target."""
    from lmtune.models.export import read_meta
    from lmtune.ops.serve_engine import resolve_serve_dir

    model_dir, version, registry = resolve_serve_dir(path)
    meta = read_meta(model_dir)
    when, when_source = release_time(model_dir)
    if version is None:  # a registry version folder says its name; a retrained run gets a new time
        version = (
            meta.get("version")
            or f"{meta.get('run_name') or model_dir.name}@{when:%Y-%m-%dT%H:%M:%SZ}"
        )
    metrics, source = release_metrics(model_dir)
    p = Path(path)
    home = registry if registry is not None else (p if p.is_dir() else p.parent)
    return Target(model_dir, version, when, when_source, metrics, source, home)


def thresholds(
    target: Target, config: Path | None = None, sets: list[str] | None = None
) -> MonitorConfig:
    """Defaults < the model's run config `monitor:` block < --config file's block < --set key=value."""
    if config is not None and not Path(config).is_file():
        raise UserError(f"--config {config} does not exist")
    data: dict[str, Any] = {}
    run = _run_dir(target.model_dir)
    for f in [
        target.model_dir / "config.yaml",
        *([run / "config.yaml"] if run else []),
        *([config] if config else []),
    ]:
        if Path(f).is_file():
            try:
                block = (yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {}).get(
                    "monitor"
                ) or {}
            except (yaml.YAMLError, AttributeError) as exc:
                raise UserError(f"{f}: not a YAML mapping of config sections ({exc})") from None
            if not isinstance(block, dict):
                raise UserError(
                    f"{f}: monitor must be a mapping of thresholds (see `lmtune config show --fields`)"
                )
            data.update(block)
    sets = [s.removeprefix("monitor.") for s in sets or []]
    try:
        return MonitorConfig.model_validate(apply_overrides(data, sets))
    except ValidationError as err:
        problems = "; ".join(
            f"monitor.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        raise UserError(
            f"monitor thresholds: {problems} (`lmtune config show --fields` lists them)"
        ) from None


def db_path(target: Target, db: Path | None) -> Path:
    """--db, else monitor.db in the folder given (the registry for a registry)."""
    return Path(db) if db else target.home / DB_NAME


def open_db(path: Path, create: bool = True) -> sqlite3.Connection | None:
    """The history database (created with the schema when absent and create); None when absent."""
    if not path.exists() and not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            with conn:
                for stmt in SCHEMA:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise UserError(
            f"{path} is not an lmtune monitor database ({exc}); pass another --db "
            "or move the file away to start a new history"
        ) from None
    if row is None or row[0] != SCHEMA_VERSION:
        conn.close()
        raise UserError(
            f"{path} has monitor schema version {row[0] if row else None}; this lmtune "
            f"reads version {SCHEMA_VERSION} (start a new history with --db)"
        )
    return conn


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record in insertion order, JSON columns decoded ([] when the database is absent)."""
    conn = open_db(path, create=False)
    if conn is None:
        return []
    with conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
    conn.close()
    for r in rows:
        for col in JSON_COLUMNS:
            r[col] = json.loads(r[col])
    return rows


def _labelled(
    target: Target, data: Path, vocab: set[str] | None, batch_size: int
) -> tuple[dict, dict]:
    """(metrics, input stats) of the model on a labelled file."""
    import torch

    from lmtune.data.pipeline import read_rows
    from lmtune.evaluate.metrics import classification_metrics
    from lmtune.evaluate.run import load_for_inference
    from lmtune.tasks import build_task, spec

    model, tokenizer, meta, cfg = load_for_inference(target.model_dir)
    rows, rejects = read_rows(data, cfg)
    if not rows:
        raise UserError(
            f"{data}: no usable rows ({len(rejects)} rejected; first: "
            f"{rejects[0]['reason'] if rejects else 'file is empty'})"
        )
    task = build_task(meta["task"], tokenizer, cfg, meta.get("labels"), None, meta.get("format"))
    texts, gold, preds = [row_text(r) for r in rows], None, None
    with torch.no_grad():
        if spec(meta["task"]).labelled:
            labels = meta["labels"]
            probs = task.predict(model, rows, batch_size)
            gold = [r["label"] for r in rows]
            ids = [labels.index(g) for g in gold]
            preds = [labels[int(i)] for i in probs.argmax(-1)]
            metrics = classification_metrics(ids, [labels.index(p) for p in preds], labels)
            picked = probs[torch.arange(len(ids)), torch.tensor(ids)]
            metrics["eval_loss"] = float(-picked.clamp_min(1e-12).log().mean())
        else:
            metrics = task.evaluate(model, rows, batch_size, None)
    metrics.pop("details", None)
    stats = batch_stats(texts, tokenizer, vocab, gold, preds)
    stats["rejected"] = len(rejects)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, stats


def record(
    target_path: Path,
    data: Path | None = None,
    predictions: Path | None = None,
    db: Path | None = None,
    batch: str | None = None,
    now: str | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score/describe one batch, compare it with the training profile, append it to the history."""
    if (data is None) == (predictions is None):
        raise UserError("give exactly one of --data LABELLED_FILE or --predictions SERVING_LOG")
    target = resolve_target(target_path)
    when = parse_now(now)
    profile = read_profile(target.model_dir)
    vocab = set(profile["vocab"]["words"]) if profile else None
    if data is not None:
        kind, source = "labelled", Path(data)
        metrics, stats = _labelled(target, source, vocab, batch_size)
    else:
        from transformers import AutoTokenizer

        from lmtune.models.export import read_meta

        kind, source, metrics = "predictions", Path(predictions), {}
        texts, preds, lines = read_prediction_log(
            source, read_meta(target.model_dir).get("labels"), target.version
        )
        tokenizer = AutoTokenizer.from_pretrained(str(target.model_dir))
        stats = {**batch_stats(texts, tokenizer, vocab, None, preds), "log": lines}
    drift = (
        compare(profile, stats)
        if profile
        else {
            "note": f"no data_profile.json in {target.model_dir} (saved before lmtune wrote profiles); retrain to get drift checks"
        }
    )
    rec = {
        "time": when.isoformat(timespec="seconds"),
        "model_version": target.version,
        "batch": batch or source.stem,
        "kind": kind,
        "source": str(source),
        "n": stats["n"],
        "metrics": metrics,
        "input_stats": stats,
        "drift": drift,
        "release": {
            "time": target.release_time.isoformat(timespec="seconds"),
            "metrics": target.release_metrics,
            "source": target.release_metrics_source,
        },
    }
    conn = open_db(db_path(target, db))
    with conn:
        cols = list(rec)
        conn.execute(
            f"INSERT INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [json.dumps(rec[c]) if c in JSON_COLUMNS else rec[c] for c in cols],
        )
    conn.close()
    return rec


RECORD_COLUMNS = (
    "time",
    "version",
    "batch",
    "kind",
    "n",
    "METRIC",
    "length PSI",
    "KS p",
    "OOV rate",
    "label PSI",
    "prediction PSI",
)


def record_row(r: dict[str, Any], metric: str) -> list[Any]:
    """One record as the values under RECORD_COLUMNS (None where a batch has no such figure)."""
    d = r["drift"]
    return [
        r["time"],
        r["model_version"],
        r["batch"],
        r["kind"],
        r["n"],
        r["metrics"].get(metric),
        d.get("length_psi"),
        (d.get("length_ks") or {}).get("pvalue"),
        d.get("oov_rate"),
        d.get("label_psi"),
        d.get("prediction_psi"),
    ]


def evaluate(
    target_path: Path,
    db: Path | None = None,
    now: str | None = None,
    config: Path | None = None,
    sets: list[str] | None = None,
) -> tuple[Target, MonitorConfig, Path, list[dict], list[Check]]:
    """(target, thresholds, database path, records, checks): what status and report show."""
    target = resolve_target(target_path)
    th = thresholds(target, config, sets)
    path = db_path(target, db)
    records = load_records(path)
    return target, th, path, records, run_checks(records, target, th, parse_now(now))


def status(
    target_path: Path,
    db: Path | None = None,
    now: str | None = None,
    config: Path | None = None,
    sets: list[str] | None = None,
    console: Any = None,
    recent: int = 10,
) -> int:
    """Print recent records and the checks; 1 when any check alerts, else 0."""
    from rich.console import Console
    from rich.table import Table

    if console is None or not console.is_terminal:
        console = Console(
            width=160
        )  # cron and CI logs have no width to fit: do not fold the tables
    target, th, path, records, checks = evaluate(target_path, db, now, config, sets)
    table = Table(title=f"recent records ({len(records)} in {path})")
    for head in RECORD_COLUMNS:
        table.add_column(
            head.replace("METRIC", th.metric), overflow="fold"
        )  # fold, never hide behind "…"
    for r in records[-recent:]:
        row = record_row({**r, "time": r["time"][:16].replace("T", " ")}, th.metric)
        table.add_row(
            *("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row)
        )
    console.print(table)
    checks_table = Table(
        "check", "result", "value", "threshold", "detail", title=f"checks for {target.version}"
    )
    style = {"ALERT": "bold red", "OK": "green", "n/a": "dim"}
    for c in checks:
        shown = ["–" if v is None else f"{v:.4g}" for v in (c.value, c.threshold)]
        checks_table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", *shown, c.detail)
    console.print(checks_table)
    alerts = [c.name for c in checks if c.status == "ALERT"]
    console.print(f"ALERT: {', '.join(alerts)}" if alerts else "all checks OK", highlight=False)
    return 1 if alerts else 0
