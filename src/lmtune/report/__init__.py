"""Human-readable outputs of a run: report.html (plots embedded) and MODEL_CARD.md.

Imports are lazy: tasks import `report.calibration` for the ECE metric and must not pull in
matplotlib for that.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from lmtune.models.readme import MODEL_CARD_FILE  # noqa: F401 - where report/ reads it


def write_report(run_or_eval_dir: str | Path) -> Path:
    """Write report.html into a run or eval folder (see report/html.py)."""
    from lmtune.report.html import write_report as _write

    return _write(run_or_eval_dir)


def write_model_card(run_dir: str | Path, model_dir: str | Path) -> Path:
    """Write MODEL_CARD.md into model_dir from the run's files (see report/model_card.py)."""
    from lmtune.report.model_card import write_model_card as _write

    return _write(run_dir, model_dir)


def write_run_card(run_dir: str | Path) -> list[Path]:
    """MODEL_CARD.md into RUN/model/ (export and release carry it) and a copy into RUN/.

    Returns [] when the run has no model/ folder (an interrupted run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir():
        return []
    card = write_model_card(run_dir, run_dir / "model")
    return [card, Path(shutil.copyfile(card, run_dir / MODEL_CARD_FILE))]


def rebuild(folder: str | Path) -> list[Path]:
    """`lmtune report`: report.html, and for a run folder its model card; errors propagate."""
    written = [write_report(folder)]
    if (Path(folder) / "model").is_dir():
        written += write_run_card(folder)
    return written


def _warn(what: str, folder: Path, exc: Exception) -> None:
    warnings.warn(
        f"{what} was not written ({type(exc).__name__}: {exc}); "
        f"retry with `lmtune report {folder}`",
        RuntimeWarning,
        stacklevel=3,
    )


def write_run_outputs(run_dir: str | Path) -> list[Path]:
    """report.html and MODEL_CARD.md at the end of `lmtune train`; never raises.

    A finished training run must not fail because of its report: on any error this warns
    with the reason and returns what it managed to write.
    """
    run_dir = Path(run_dir)
    written: list[Path] = []
    try:
        written.append(write_report(run_dir))
    except Exception as exc:  # noqa: BLE001 - reporting is best effort by design
        _warn("report.html", run_dir, exc)
    try:
        written += write_run_card(run_dir)
    except Exception as exc:  # noqa: BLE001
        _warn(MODEL_CARD_FILE, run_dir, exc)
    return written


def write_eval_report(eval_dir: str | Path) -> Path | None:
    """report.html at the end of `lmtune eval`; warns and returns None instead of raising."""
    try:
        return write_report(eval_dir)
    except Exception as exc:  # noqa: BLE001
        _warn("report.html", Path(eval_dir), exc)
        return None
