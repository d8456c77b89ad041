"""The report section of samples.json: a causal model's answers before and after training."""

from __future__ import annotations

from typing import Any

from lmtune.report.collect import Folder
from lmtune.report.htmlkit import para, section, table


def _text(value: Any) -> str:
    """A generation as shown: None is 'not generated', an empty answer says so."""
    if value is None:
        return "(not generated)"
    return str(value) if str(value).strip() else "(empty: the model stopped at once)"


def samples(f: Folder) -> str:
    """Held-out prompts with the reference answer and the generations before/after training."""
    data = f.samples
    rows_in = [s for s in data.get("samples") or [] if isinstance(s, dict)]
    if not rows_in:
        return ""
    kinds = sorted({str(s.get("reference_kind") or "reference") for s in rows_in})
    ref_head = "reference" if kinds == ["reference"] else f"reference ({', '.join(kinds)})"
    rows = [
        [
            s.get("prompt", ""),
            s.get("reference") or "",
            _text(s.get("before")),
            _text(s.get("after")),
        ]
        for s in rows_in
    ]
    note = (
        f"The first {len(rows_in)} prompts of the {data.get('split', 'held-out')} split, "
        f"answered by the model as loaded (before) and by the kept model (after), "
        f"{data.get('decoding', 'greedy')} decoding of at most {data.get('max_new_tokens')} new "
        "tokens (samples.json)."
    )
    notes = data.get("notes") or {}
    extra = "".join(
        para(f"{stage} training: {why}", "muted") for stage, why in notes.items() if why
    )
    body = para(note, "muted") + extra
    body += table(["prompt", ref_head, "before training", "after training"], rows, "samples")
    return section("samples", "Sample generations", body)
