"""report.html: one self-contained page (CSS inline, PNG plots as base64) for a run or eval.

The page reads only the folder's files (collect.py), so `lmtune report DIR` can rebuild it at
any time; a section whose file is absent is left out rather than shown empty.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmtune.report import sections
from lmtune.report.collect import Folder, load_folder
from lmtune.report.htmlkit import CSS, esc
from lmtune.report.samples import samples

REPORT_FILE = "report.html"

#: Page order: what a reader asks first (is it good? did it overfit?) comes first.
SECTIONS = (
    sections.metrics,
    sections.curves,
    samples,
    sections.per_class,
    sections.confusion,
    sections.calibration,
    sections.errors,
    sections.qa_predictions,
    sections.baselines,
    sections.forgetting,
    sections.audit,
    sections.run_facts,
    sections.data,
    sections.other,
    sections.config,
)


def _toc(body: str) -> str:
    """Links to every section in the page, in order."""
    found = re.findall(r'<section id="([^"]+)"><h2>(.*?)</h2>', body)
    # Spaces between the links are where a long list wraps; titles are already escaped.
    links = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in found)
    return f"<nav>{links}</nav>" if links else ""


def render_report(folder: Folder) -> str:
    """The whole HTML page for a loaded folder."""
    from lmtune import __version__

    body = "".join(fn(folder) for fn in SECTIONS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(folder.name)} · lmtune report</title><style>{CSS}</style></head><body><main>"
        f"{sections.header(folder)}{sections.overfitting(folder)}{_toc(body)}{body}"
        f"<footer>Written by lmtune {esc(__version__)} from the files in this folder; "
        "rebuild with <code>lmtune report FOLDER</code>.</footer></main></body></html>\n"
    )


def write_report(run_or_eval_dir: str | Path) -> Path:
    """Write DIR/report.html for a run folder (`lmtune train`) or an eval folder (`lmtune eval`).

    Written to a temporary file and renamed, so a reader never sees half a page.
    """
    folder = load_folder(run_or_eval_dir)
    out = folder.root / REPORT_FILE
    tmp = out.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(render_report(folder), encoding="utf-8")
    tmp.replace(out)
    return out
