"""A versioned model registry on disk: REGISTRY/v1, v2, ..., REGISTRY/current, releases.jsonl.

Each version folder is complete and standalone (what `export_merged` writes: merged weights,
tokenizer, lmtune_model.json; plus MODEL_CARD.md, metrics.json, config.yaml, and
data_profile.json / report.html when the run had them), so it can be copied anywhere and
served, evaluated or monitored on its own. `current` is a text file holding the served
version's name; `lmtune serve REGISTRY` and `lmtune monitor ... REGISTRY` follow it.

Crash safety, in the order a release happens:
1. the version folder is built under a hidden temporary name inside REGISTRY and renamed
   into place in one step (a reader never sees half a version);
2. `current` is rewritten through a temporary file and os.replace (a reader sees the old
   name or the new one, never an empty or partial file);
3. the release is appended to releases.jsonl (the audit log).
A crash between 1 and 2 leaves a complete new folder that is not current: the old current
stays valid and the next release takes the following number.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune.atomic import atomic_write_text
from lmtune.errors import UserError
from lmtune.ops.profile import read_json_file

CURRENT = "current"
LOG_FILE = "releases.jsonl"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
META_FILE = (
    "lmtune_model.json"  # same name as models.export.META_FILE (not imported: no torch here)
)
VERSION_RE = re.compile(r"^v(\d+)$")
# Run files a release carries beside the model, when the run wrote them.
RUN_FILES = ("config.yaml", "report.html", CARD_FILE)


def now_iso() -> str:
    """The current UTC time as ISO 8601 with a Z (what metrics.json and releases.jsonl hold)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_number(name: str) -> int | None:
    """3 for 'v3'; None for anything that is not a version name."""
    m = VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def list_versions(registry: str | Path) -> list[str]:
    """Version folders (v1, v2, ...) in numeric order; hidden temporary folders are ignored."""
    reg = Path(registry)
    if not reg.is_dir():
        return []
    found = [p.name for p in reg.iterdir() if p.is_dir() and version_number(p.name) is not None]
    return sorted(found, key=lambda n: version_number(n) or 0)


def read_log(registry: str | Path) -> list[dict[str, Any]]:
    """releases.jsonl as a list of events (release, rollback); [] when there is none yet."""
    path = Path(registry) / LOG_FILE
    if not path.is_file():
        return []
    events = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(
                f"{path} line {i} is not valid JSON; repair or remove that line"
            ) from None
    return events


def next_version(registry: str | Path) -> str:
    """One above the highest version ever used (folders and the log), so a number never repeats."""
    used = [version_number(v) or 0 for v in list_versions(registry)]
    used += [version_number(str(e.get("version", ""))) or 0 for e in read_log(registry)]
    return f"v{max(used, default=0) + 1}"


def _pointer_name(registry: Path) -> str | None:
    """What `current` says, unchecked (None when there is no pointer)."""
    pointer = registry / CURRENT
    if pointer.is_symlink():
        return os.readlink(pointer).rstrip("/")
    if pointer.is_file():
        return pointer.read_text(encoding="utf-8").strip()
    return None


def pointer_problem(registry: str | Path) -> str | None:
    """Why `current` cannot be followed (empty, dangling, or naming something other than a
    version folder of this registry such as ../run1 or an absolute path); None when it is
    absent or fine."""
    reg = Path(registry)
    name = _pointer_name(reg)
    if name is None:
        return None
    fix = f"point it at a version with `lmtune registry rollback {registry} VERSION`"
    if not name:
        return f"{reg / CURRENT} is empty; {fix}"
    if version_number(name) is None:  # the same rule rollback applies: vN inside the registry
        return (
            f"{reg / CURRENT} names '{name}', which is not a version of this registry "
            f"(v1, v2, ... inside {registry}); {fix}"
        )
    if not (reg / name).is_dir():
        return f"{reg / CURRENT} names '{name}', which is not a version folder in {registry}; {fix}"
    return None


def read_current(registry: str | Path) -> str | None:
    """The version `current` names (a text file, or a symlink made by hand); None when absent.

    UserError when the pointer is empty, dangling, or names anything but a version folder
    of this registry (serving must never follow it out of the registry)."""
    problem = pointer_problem(registry)
    if problem:
        raise UserError(problem)
    return _pointer_name(Path(registry))


def set_current(registry: str | Path, version: str) -> None:
    """Point `current` at version atomically (temp file + os.replace: never half-written)."""
    atomic_write_text(Path(registry) / CURRENT, version + "\n")


def read_metrics(version_dir: str | Path) -> dict[str, Any] | None:
    """A version's metrics.json (None when absent)."""
    return read_json_file(Path(version_dir) / METRICS_FILE, "restore it from the run folder")


def current_release(registry: str | Path) -> dict[str, Any] | None:
    """metrics.json of the current version (with its version name); None when nothing is current."""
    version = read_current(registry)
    if version is None:
        return None
    metrics = read_metrics(Path(registry) / version)
    if metrics is None:
        raise UserError(
            f"{Path(registry) / version} has no {METRICS_FILE}, so it cannot be compared; "
            "turn off gate.require_beat_current or release through `lmtune pipeline`"
        )
    return {**metrics, "version": version}


def append_log(registry: str | Path, event: dict[str, Any]) -> None:
    """Append one event line to releases.jsonl (flushed to disk before returning)."""
    with (Path(registry) / LOG_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(event, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fill_version(
    tmp: Path,
    version: str,
    run_dir: Path | None,
    model_dir: Path,
    metrics: dict[str, Any],
    card_section: str | None = None,
) -> None:
    """Everything beside the exported model: run files, metrics.json, the version in the meta,
    and card_section appended to MODEL_CARD.md."""
    for name in RUN_FILES:
        src = run_dir / name if run_dir is not None else None
        if src is not None and src.is_file() and not (tmp / name).exists():
            shutil.copy2(src, tmp / name)
    if not (tmp / "data_profile.json").exists() and (model_dir / "data_profile.json").is_file():
        shutil.copy2(model_dir / "data_profile.json", tmp / "data_profile.json")
    meta_path = tmp / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    # A copied-out version folder still says which release it was (monitor reads "version").
    meta["version"] = version
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    card = tmp / CARD_FILE
    if run_dir is not None and card.is_file():
        from lmtune.report.model_card import write_model_card

        # Rewritten from this folder's own meta: the release holds merged weights, not an adapter.
        write_model_card(run_dir, tmp)
    if card_section and card.is_file():  # the card was written before the release was decided
        text = card_section.replace("{version}", version).replace(
            "{released_at}", metrics["released_at"]
        )
        card.write_text(
            card.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n",
            encoding="utf-8",
        )
        from lmtune.models.readme import write_readme

        write_readme(tmp)  # README.md shows the same card, release section included


def release(
    registry: str | Path,
    model_dir: str | Path,
    run_dir: str | Path | None,
    metrics: dict[str, Any],
    log: dict[str, Any] | None = None,
    card_section: str | None = None,
) -> tuple[str, Path]:
    """Export model_dir as the next version, make it current, log it; returns (version, folder).

    metrics goes to VERSION/metrics.json with version and released_at added; log's keys go
    into the releases.jsonl line; card_section (markdown, where {version} and {released_at}
    are filled in) is appended to the version's MODEL_CARD.md when it has one.
    """
    from lmtune.models.export import export_merged  # torch: only when actually releasing

    reg = Path(registry)
    if reg.exists() and not reg.is_dir():
        raise UserError(f"registry {reg} is a file; gate.registry must name a folder")
    reg.mkdir(parents=True, exist_ok=True)
    version = next_version(reg)
    previous = _pointer_name(reg)  # unchecked: a release also repairs a broken pointer
    when = now_iso()
    tmp = reg / f".{version}.building-{uuid.uuid4().hex[:8]}"
    try:
        export_merged(Path(model_dir), tmp)
        _fill_version(
            tmp,
            version,
            Path(run_dir) if run_dir else None,
            Path(model_dir),
            {**metrics, "version": version, "released_at": when},
            card_section,
        )
        final = reg / version
        if final.exists():  # another release took this number meanwhile; never overwrite one
            where = f"lmtune registry release {run_dir}" if run_dir else "the release"
            raise UserError(
                f"{final} appeared while this release was being built (a concurrent "
                f"release?); run `{where}` to release it as the next number, without "
                "retraining"
            )
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    set_current(reg, version)
    append_log(
        reg,
        {**(log or {}), "event": "release", "version": version, "time": when, "previous": previous},
    )
    return version, final


def rollback(registry: str | Path, version: str) -> str | None:
    """Point current at an existing version (usually an older one); returns the previous current."""
    reg = Path(registry)
    if not reg.is_dir():
        raise UserError(f"registry {reg} does not exist")
    versions = list_versions(reg)
    if version not in versions:
        raise UserError(
            f"{reg} has no version '{version}' (versions: {', '.join(versions) or 'none'})"
        )
    if not (reg / version / META_FILE).is_file():
        raise UserError(
            f"{reg / version} is not a complete model folder (no {META_FILE}); pick another version"
        )
    previous = _pointer_name(reg)
    set_current(reg, version)
    append_log(
        reg, {"event": "rollback", "version": version, "time": now_iso(), "previous": previous}
    )
    return previous


def version_rows(registry: str | Path) -> list[dict[str, Any]]:
    """One row per version for `lmtune registry list`: time, metric, value, run, current."""
    reg = Path(registry)
    if not reg.is_dir():
        raise UserError(
            f"registry {reg} does not exist (a first `lmtune pipeline` release creates it)"
        )
    current = _pointer_name(reg)  # listing must work even when the pointer is broken
    if pointer_problem(reg):
        current = None
    rows = []
    for v in list_versions(reg):
        m = read_metrics(reg / v) or {}
        rows.append(
            {
                "version": v,
                "released_at": m.get("released_at"),
                "metric": m.get("metric"),
                "value": m.get("value"),
                "run": m.get("run_dir"),
                "current": v == current,
                "complete": (reg / v / META_FILE).is_file(),
            }
        )
    return rows


def registry_table(registry: str | Path) -> Any:
    """`lmtune registry list` as a rich table (or a one-line message when there are no versions)."""
    from rich.table import Table

    rows = version_rows(registry)
    if not rows:
        return f"{registry}: no versions yet"
    table = Table("", "version", "released", "metric", "value", "run", title=str(registry))
    for r in rows:
        value = f"{r['value']:.4f}" if isinstance(r["value"], (int, float)) else "-"
        table.add_row(
            "*" if r["current"] else "",
            r["version"] + ("" if r["complete"] else " (incomplete)"),
            r["released_at"] or "-",
            r["metric"] or "-",
            value,
            r["run"] or "-",
        )
    return table
