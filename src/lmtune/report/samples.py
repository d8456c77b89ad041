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
    kinds = sorted({str(s.get("reference_kind")) for s in rows_in if s.get("reference")})
    ref_head = f"reference ({kinds[0]})" if len(kinds) == 1 else "reference"

    def ref(s: dict[str, Any]) -> str:  # mixed kinds (kto: desirable or not): each says its own
        text = str(s.get("reference") or "")
        return f"{text}\n({s.get('reference_kind')})" if text and len(kinds) > 1 else text

    rows = [
        [s.get("prompt", ""), ref(s), _text(s.get("before")), _text(s.get("after"))]
        for s in rows_in
    ]
    heads = ["prompt", ref_head, "before training", "after training"]
    if not kinds:  # rlhf prompts carry no answer: no empty column
        heads, rows = [heads[0], *heads[2:]], [[r[0], *r[2:]] for r in rows]
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
    body += table(heads, rows, "samples")
    return section("samples", "Sample generations", body)
