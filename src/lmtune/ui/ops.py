"""The UI's views of registries, monitors and the playground (over lmtune.ops)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.ui import runs

MAX_CHAT_TOKENS = 256  # the playground's cap on one answer


def registry_view(root: Path, reg: Path) -> dict[str, Any]:
    """A registry's versions (gate results and metrics) and its release log."""
    from lmtune.ops.registry import read_log, read_metrics, version_rows

    rows = version_rows(reg)
    for row in rows:
        row["metrics"] = read_metrics(reg / row["version"]) or {}
    try:
        log = read_log(reg)
    except UserError as exc:  # a damaged releases.jsonl is shown, not fatal for the page
        log = [{"event": "error", "detail": str(exc)}]
    return {"path": str(reg.relative_to(root)), "versions": rows, "log": log[-50:]}


def registry_action(root: Path, body: dict[str, Any]) -> dict[str, Any]:
    """rollback (point current at a version) or release (a finished run's model as a version)."""
    from lmtune.ops.registry import release, rollback

    reg = runs.safe_path(root, str(body.get("registry", "")))
    if body.get("action") == "rollback":
        previous = rollback(reg, str(body.get("version", "")))
        return {"current": body.get("version"), "previous": previous}
    if body.get("action") == "release":
        run_dir = runs.safe_path(root, str(body.get("run", "")))
        summary = runs.read_json(run_dir / "summary.json") or {}
        if not (run_dir / "model").is_dir():
            raise UserError(f"{body.get('run')} has no model/ folder to release")
        metric = summary.get("best_metric")
        metrics = {
            "metric": metric,
            "value": summary.get("best_metric_value"),
            "run_dir": str(run_dir),
        }
        version, _ = release(reg, run_dir / "model", run_dir, metrics, {"source": "lmtune ui"})
        return {"current": version}
    raise UserError(f"unknown registry action {body.get('action')!r}")


def monitor_view(root: Path, db: Path) -> dict[str, Any]:
    """Recorded batches with their accuracy/drift figures, and the checks (ALERT highlighted)."""
    from lmtune.ops.monitor import RECORD_COLUMNS, evaluate, load_records, record_row

    view: dict[str, Any] = {"path": str(db.relative_to(root)), "columns": list(RECORD_COLUMNS)}
    try:
        target, th, _, records, checks = evaluate(db.parent, db)
        view["metric"] = th.metric
        view["version"] = target.version
        view["checks"] = [c.__dict__ for c in checks]
    except UserError as exc:  # a database whose model moved away: show the records alone
        records = load_records(db)
        view["metric"], view["checks"], view["problem"] = "accuracy", [], str(exc)
    view["records"] = [record_row(r, view["metric"]) for r in records[-200:]]
    return view


def playground_models(root: Path) -> list[dict[str, Any]]:
    """Models the playground can load: finished runs and registry versions."""
    found = []
    for run_dir in runs.find_runs(root):
        meta = runs.read_json(run_dir / "model" / "lmtune_model.json")
        if meta:
            found.append(
                {
                    "id": str(run_dir.relative_to(root.resolve()) / "model"),
                    "task": meta.get("task"),
                    "kind": "run",
                }
            )
    for reg in runs.find_registries(root):
        for version in sorted(p for p in reg.iterdir() if p.is_dir()):
            meta = runs.read_json(version / "lmtune_model.json")
            if meta:
                found.append(
                    {
                        "id": str(version.relative_to(root.resolve())),
                        "task": meta.get("task"),
                        "kind": "registry",
                    }
                )
    return found


def model_path(root: Path, rel: str) -> Path:
    """A model folder under ROOT (refused when outside it or not an lmtune model)."""
    path = runs.safe_path(root, rel)
    if not (path / "lmtune_model.json").is_file():
        raise UserError(f"{rel} is not an lmtune model folder")
    return path


def chat_params(engine: Any, body: dict[str, Any]) -> tuple[list[int], Any]:
    """(prompt ids, GenParams) of a playground chat request, checked before streaming starts."""
    from lmtune.ops.serve_engine import GenParams

    if engine.kind != "causal":
        raise UserError("this model is a classifier: use the classify box")
    messages = body.get("messages") or []
    if not messages or not all(isinstance(m, dict) for m in messages):
        raise UserError("send messages: [{role, content}, ...]")
    ids = engine.encode_chat(messages)
    room = engine.max_context - len(ids)
    if room < 1:
        raise UserError(f"the conversation is {len(ids)} tokens: longer than the model takes")
    asked = int(body.get("max_tokens") or 64)
    params = GenParams(
        max_tokens=max(1, min(asked, room, MAX_CHAT_TOKENS)),
        temperature=float(body.get("temperature", 0.0)),
        seed=body.get("seed"),
    )
    return ids, params


def chat_stream(engine: Any, ids: list[int], params: Any) -> Iterator[str]:
    """Server-sent events of one streamed answer (the serve engine's own decoding)."""
    start = time.perf_counter()
    for piece in engine.generate(ids, params):
        event = {
            "text": piece.text,
            "finish": piece.finish_reason,
            "tokens": piece.completion_tokens,
        }
        if piece.finish_reason:
            event["seconds"] = round(time.perf_counter() - start, 3)
        yield f"data: {json.dumps(event)}\n\n"


def classify(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Label and per-label scores for one text (and an optional second text)."""
    if engine.kind != "classifier":
        raise UserError("this model generates text: use the chat box")
    text = str(body.get("text") or "").strip()
    if not text:
        raise UserError("type a text to classify")
    item = {"text": text, **({"text_pair": body["text_pair"]} if body.get("text_pair") else {})}
    return engine.classify([item])[0]
