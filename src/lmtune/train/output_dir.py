"""The run folder before a run starts: usable, and not silently mixed with an older run.

A second `lmtune train` into a folder that holds a previous run's checkpoints would resume
nothing yet keep the old checkpoints beside the new ones (keep_last, best/ and report.html
would mix the two runs). So it is refused unless the user says what they want: `--resume`
continues the old run, `--overwrite` removes its outputs first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmtune.errors import UserError

#: What a previous run leaves that a new one would mix with (folders, then files).
RUN_FOLDERS = ("checkpoints", "best", "model")
RUN_FILES = ("summary.json", "metrics.jsonl", "report.html", "MODEL_CARD.md")


def require_dir(path: str | Path, key: str = "run.output_dir") -> Path:
    """`path` as a folder that exists or can be created; UserError naming it when it cannot."""
    p = Path(path)
    for node in (p, *p.parents):
        if node.exists():
            if not node.is_dir():
                what = "is" if node == p else f"lies inside {node}, which is"
                raise UserError(
                    f"{key} {p} {what} a file, not a folder: point {key} at a folder "
                    "(it is created when missing)"
                )
            break
    p.mkdir(parents=True, exist_ok=True)
    return p


def previous_run(path: Path) -> list[str]:
    """The names in `path` that show a previous run trained there (empty for a fresh folder)."""
    found = [
        name for name in RUN_FOLDERS if (path / name).is_dir() and any((path / name).iterdir())
    ]
    if (path / "summary.json").is_file():
        found.append("summary.json")
    return found


def check_fresh(path: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a new run into a folder holding a previous one, unless resume or overwrite.

    A folder with only prepared data (`lmtune prepare`) or nothing in it is fine.
    """
    p = require_dir(path)
    if resume and overwrite:
        raise UserError(
            "--resume continues the run in the folder and --overwrite removes it: pick one"
        )
    found = previous_run(p)
    if not found or resume:
        return
    if not overwrite:
        raise UserError(
            f"{p} holds a previous run ({', '.join(found)}): add --resume to continue it, "
            f"--overwrite to replace it, or set run.output_dir to a new folder"
        )
    for name in RUN_FOLDERS:
        shutil.rmtree(p / name, ignore_errors=True)
    for name in RUN_FILES:
        (p / name).unlink(missing_ok=True)
