"""Which task a config means when it does not say: read it from the data's format.

Instruction or chat rows mean sft, prompt/chosen/rejected pairs mean dpo, text with a label
means classification, SQuAD-style context/question rows mean qa. `task:` in the config (or a
`task=` override) always wins; when the data does not decide, the default stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.errors import UserError

#: format -> the task a user most likely wants from it. Prompt-only rows are left out: online
#: RL needs a reward besides the data, which a guess cannot supply.
FORMAT_TASK = {
    "instruction": "sft",
    "chat": "sft",
    "text": "sft",
    "preference": "dpo",
    "pairwise": "dpo",
    "dialogue_pair": "dpo",
    "classification": "classification",
    "pair_classification": "classification",
    "qa": "qa",
}
SAMPLE_ROWS = 200


def format_of_columns(columns: list[str], mapping: dict[str, str]) -> str | None:
    """The most specific format these columns hold, or None when none fits."""
    from lmtune.data.formats import PREFERENCE, REQUIRED

    present = set(columns)

    def has(field: str) -> bool:
        return mapping.get(field, field) in present

    if has("context") and has("question"):
        return "qa"
    for fmt in PREFERENCE:  # most specific first, as the preference tasks detect them
        if all(has(f) for f in REQUIRED[fmt]):
            return fmt
    if has("text") and has("label"):
        return "pair_classification" if has("text_pair") else "classification"
    chat = has("messages")
    instruction = has("instruction") and has("output")
    if chat != instruction:
        return "chat" if chat else "instruction"
    if not chat and has("text"):
        return "text"
    return None


def infer_task(data: dict[str, Any]) -> tuple[str | None, str]:
    """(task, why) for a raw config dict without `task`; (None, reason) when undecided.

    Reads the first rows of the first training file (the pipeline reads it again in full and
    reports its problems; a file that cannot be read here simply decides nothing).
    """
    from lmtune.data.formats import columns_of, resolve_mapping
    from lmtune.data.io import as_paths, read_file

    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    fmt = section.get("format", "auto")
    if isinstance(fmt, str) and fmt in FORMAT_TASK:
        return FORMAT_TASK[fmt], f"from data.format {fmt}"
    try:
        paths = as_paths(section.get("train"))
    except (UserError, TypeError):
        return None, "data.train cannot be read"
    if not paths or not Path(paths[0]).expanduser().exists():
        return None, "no training file to read"
    columns_map = section.get("columns") if isinstance(section.get("columns"), dict) else {}
    try:
        records = read_file(paths[0], "train", SAMPLE_ROWS)
        columns = columns_of(r.data for r in records)
        mapping = resolve_mapping(columns, {str(k): str(v) for k, v in columns_map.items()})
    except (UserError, OSError, ValueError):
        return None, f"{paths[0]} could not be read"
    found = format_of_columns(columns, mapping)
    if found is None:
        return None, f"the columns of {paths[0]} ({', '.join(columns)}) fit no task by themselves"
    return FORMAT_TASK[found], f"inferred from the {found} rows of {paths[0]}"
