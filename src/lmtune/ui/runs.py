"""What the UI reads from disk: run folders, their status and files, registries, monitors.

Everything here is read-only over ROOT and never trusts a name from a request: `safe_path`
resolves every path (symlinks included) and refuses anything that lands outside ROOT.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import UserError

#: A run folder is one that holds the resolved config that `lmtune train` writes first.
RUN_MARKER = "config.yaml"
#: Where the UI keeps its own records (launched processes and their logs) under ROOT.
UI_DIR = ".lmtune-ui"
#: A run without a summary whose metrics.jsonl changed this recently counts as running.
ACTIVE_SECONDS = 120.0


def safe_path(root: Path, rel: str) -> Path:
    """ROOT/rel resolved, refused (UserError) when it leaves ROOT (.., absolute, symlinks)."""
    root = root.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"{rel!r} is outside the UI root {root}")
    return target


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when absent or unreadable (a run still writing it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_events(run_dir: Path, since: int = 0) -> tuple[list[dict[str, Any]], int]:
    """metrics.jsonl events from byte offset `since`, and the offset after the last full line."""
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(since)
            data = f.read()
    except OSError:
        return [], since
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, since + end


def launch_record(root: Path, name: str) -> dict[str, Any] | None:
    """What the UI recorded when it launched run `name` (pid, command, log), if it did."""
    return read_json(root / UI_DIR / f"{name}.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped is a zombie: not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def run_status(root: Path, run_dir: Path, summary: dict[str, Any] | None) -> str:
    """running / finished / stopped early / failed / interrupted, read off the folder."""
    record = launch_record(root, run_dir.name) or {}
    pid = record.get("pid")
    if isinstance(pid, int) and _alive(pid):
        return "running"
    if summary and "model_dir" in summary:
        return "stopped early" if summary.get("stopped_early") else "finished"
    exit_code = read_json(root / UI_DIR / f"{run_dir.name}.exit")
    if isinstance(exit_code, int) and exit_code != 0:
        return "failed"
    log = run_dir / "metrics.jsonl"
    if not record and log.is_file() and time.time() - log.stat().st_mtime < ACTIVE_SECONDS:
        return "running"  # started outside the UI and still writing
    return "interrupted" if log.is_file() or (run_dir / "checkpoints").is_dir() else "failed"


def find_runs(root: Path) -> list[Path]:
    """Run folders under ROOT (at most three levels down), newest first."""
    found: list[Path] = []
    root = root.resolve()
    for depth in ("*", "*/*", "*/*/*"):
        for marker in root.glob(f"{depth}/{RUN_MARKER}"):
            folder = marker.parent
            if UI_DIR in folder.parts or folder.name in ("model", "best"):
                continue
            if folder.resolve().is_relative_to(root):  # a symlink out of ROOT is not listed
                found.append(folder)
    return sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)


def run_row(root: Path, run_dir: Path) -> dict[str, Any]:
    """One line of the runs table."""
    summary = read_json(run_dir / "summary.json")
    config = read_config(run_dir)
    events, _ = read_events(run_dir)
    train = [e for e in events if e.get("event") == "train"]
    last = train[-1] if train else {}
    elapsed = (summary or {}).get("train_runtime_s") or last.get("elapsed_s")
    tokens = (summary or {}).get("train_tokens_per_s")
    if tokens is None and last.get("elapsed_s"):
        tokens = round(float(last.get("tokens", 0)) / max(float(last["elapsed_s"]), 1e-9), 1)
    return {
        "name": str(run_dir.relative_to(root.resolve())),
        "task": config.get("task"),
        "model": (config.get("model") or {}).get("name_or_path"),
        "adapter": (config.get("adapter") or {}).get("type"),
        "status": run_status(root, run_dir, summary),
        "best_metric": (summary or {}).get("best_metric"),
        "best_value": (summary or {}).get("best_metric_value"),
        "steps": (summary or {}).get("train_steps") or last.get("step"),
        "time_s": elapsed,
        "tokens_per_s": tokens,
        "modified": run_dir.stat().st_mtime if run_dir.exists() else time.time(),
    }


def read_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with (an empty dict when unreadable)."""
    try:
        data = yaml.safe_load((run_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: the form a config diff compares."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_diff(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the keys whose values differ between the runs, one row per key."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for key in keys:
        values = {name: f.get(key) for name, f in flat.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            rows.append({"key": key, "values": values})
    return rows


def read_jsonl(path: Path, limit: int = 500) -> list[dict[str, Any]]:
    """The first `limit` JSON lines of a file (errors.jsonl, rejects.jsonl); bad lines skipped."""
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if len(rows) >= limit:
                    break
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        return []
    return rows


def find_registries(root: Path) -> list[Path]:
    """Registry folders under ROOT: those holding a releases.jsonl log or version folders."""
    from lmtune.ops.registry import version_number

    found = set()
    for log in root.resolve().glob("**/releases.jsonl"):
        found.add(log.parent)
    for child in root.resolve().glob("**/v*"):
        if child.is_dir() and version_number(child.name) is not None:
            found.add(child.parent)
    return sorted(p for p in found if UI_DIR not in p.parts)


def find_monitors(root: Path) -> list[Path]:
    """Monitor databases (SQLite files written by `lmtune monitor record`) under ROOT."""
    return sorted(p for p in root.resolve().glob("**/*.db") if _is_monitor_db(p))


def _is_monitor_db(path: Path) -> bool:
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return {"records", "schema_version"} <= names
