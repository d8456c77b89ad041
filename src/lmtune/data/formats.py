"""Row formats: detect the format from the columns, map user columns, validate rows.

Canonical rows per format (what tasks consume):
  text                {"text"}
  instruction         {"instruction", "input" (may be ""), "output"}
  chat                {"messages": [{"role", "content"}, ...]}
  classification      {"text", "label"}
  pair_classification {"text", "text_pair", "label"}
  preference          {"prompt" (text or messages), "chosen", "rejected"[, "margin"]}, read from
                      prompt/chosen/rejected, pairwise response_a/response_b/preference, or
                      dialogue_pair full dialogues (see data/preference.py)
  prompt              {"prompt" (text or messages)}: prompts only, for online RL (task rlhf)
  qa                  {"id"?, "title", "context", "question", "answers": {"text", "answer_start"},
                      "is_impossible"}: extractive QA from SQuAD JSON or flat rows (data/squad.py)
Tasks may declare more formats in their spec (tasks/spec.py RowFormat): required fields,
content fields and a normalizer in the task's own module; the functions below consult them.
Validation turns one user row into a canonical row or raises RowError with a reason that
names the field, so each bad row lands in rejects.jsonl instead of failing the run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lmtune.data.io import has_surrogate
from lmtune.errors import UserError

PREFERENCE = ("preference", "pairwise", "dialogue_pair")
FORMATS = (
    "text",
    "instruction",
    "chat",
    "classification",
    "pair_classification",
    *PREFERENCE,
    "prompt",
    "qa",
)
LABELLED = ("classification", "pair_classification")
REQUIRED = {
    "text": ("text",),
    "instruction": ("instruction", "output"),
    "chat": ("messages",),
    "classification": ("text", "label"),
    "pair_classification": ("text", "text_pair", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "pairwise": ("prompt", "response_a", "response_b", "preference"),
    "dialogue_pair": ("chosen", "rejected"),
    "prompt": ("prompt",),
    "qa": ("context", "question"),  # answers are checked by data/squad.py (optional to predict)
}
# Fields whose text is cleaned, redacted and compared for duplicates (chat: message contents).
CONTENT_FIELDS = {
    "text": ("text",),
    "instruction": ("instruction", "input", "output"),
    "chat": (),
    "classification": ("text",),
    "pair_classification": ("text", "text_pair"),
    # All three preference shapes become the same canonical row; prompt may be messages.
    **{f: ("prompt", "chosen", "rejected") for f in PREFERENCE},
    "prompt": ("prompt",),
    "qa": ("context", "question"),
}
# A data.columns example per format family, for error messages.
_EXAMPLES = {
    "classification": "{text: review, label: stars}",
    "chat": "{instruction: question, output: answer}",
    "prompt": "{prompt: question}",
    "qa": "{context: passage, question: query}",
}


def task_formats(task: str) -> tuple[str, ...]:
    """The formats task reads (its spec), or every format for an unknown task."""
    from lmtune.tasks import TASKS

    return TASKS[task].formats if task in TASKS else (*FORMATS, *_declared())


def _declared() -> dict[str, Any]:
    from lmtune.tasks import row_formats

    return row_formats()


def required_fields(fmt: str) -> tuple[str, ...]:
    """Fields a row of fmt must have (built-in or task-declared)."""
    return REQUIRED[fmt] if fmt in REQUIRED else _declared()[fmt].required


def content_fields(fmt: str) -> tuple[str, ...]:
    """Text fields of a canonical row of fmt that cleaning, dedupe and length limits read."""
    return CONTENT_FIELDS[fmt] if fmt in CONTENT_FIELDS else _declared()[fmt].content


ROLES = ("system", "user", "assistant")
# ShareGPT `from` values -> roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
# Common column names accepted without data.columns (field -> candidate columns).
ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("sentence", "review", "content"),
    "output": ("response", "completion"),
    "instruction": ("prompt",),
    "messages": ("conversations",),
}
PAIR_ALIASES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"))


class RowError(Exception):
    """A row that cannot become canonical: reason for rejects.jsonl, kind for report counts."""

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or reason


@dataclass
class Schema:
    """How to read rows of one file: the format and field -> user column mapping."""

    format: str
    mapping: dict[str, str]  # lmtune field -> column name in the user's rows
    group_column: str | None = None  # data.balance.column when it is not the label
    labels_optional: bool = False  # predict inputs may have no label


def columns_of(rows: Iterable[dict[str, Any] | None], sample: int = 1000) -> list[str]:
    """Column names seen in the first `sample` parsed rows, in first-seen order."""
    seen: dict[str, None] = {}
    for i, row in enumerate(r for r in rows if r is not None):
        if i >= sample:
            break
        seen.update(dict.fromkeys(row))
    return list(seen)


def resolve_mapping(columns: list[str], user_map: dict[str, str]) -> dict[str, str]:
    """field -> column: data.columns first, then common aliases for fields still missing.

    Aliases fill only fields neither mapped nor present, and two aliases that could both fill
    the same field are an error (guessing the wrong text column would train on wrong data).
    """
    mapping = dict(user_map)
    present = set(columns)
    used = set(mapping.values())

    def missing(f: str) -> bool:
        return f not in mapping and f not in present

    if missing("text") and missing("text_pair"):
        pairs = [p for p in PAIR_ALIASES if p[0] in present and p[1] in present]
        if len(pairs) == 1 and not used & set(pairs[0]):
            mapping["text"], mapping["text_pair"] = pairs[0]
            used.update(pairs[0])
    for f, names in ALIASES.items():
        if not missing(f):
            continue
        found = [n for n in names if n in present and n not in used]
        if len(found) > 1:
            raise UserError(
                f"columns {' and '.join(repr(n) for n in found)} could each be the '{f}' field; "
                f"columns found: {', '.join(columns)}. Pick one with data.columns "
                f"(e.g. data.columns={{{f}: {found[0]}}})"
            )
        if found:
            mapping[f] = found[0]
            used.add(found[0])
    return mapping


def _has(field: str, columns: set[str], mapping: dict[str, str]) -> bool:
    return mapping.get(field, field) in columns


def _missing(fields: list[str], mapping: dict[str, str]) -> str:
    # Name the mapped column too: "no column for 'text' (mapped to 'body')" says what to fix.
    return ", ".join(
        f"'{f}' (mapped to '{mapping[f]}', not found)" if mapping.get(f, f) != f else f"'{f}'"
        for f in fields
    )


def detect_format(
    columns: list[str],
    mapping: dict[str, str],
    task: str,
    requested: str,
    where: str,
    labels_optional: bool = False,
) -> str:
    """The format for these columns (or check the requested one); UserError when unclear."""
    cols = set(columns)
    allowed = task_formats(task)
    declared = {f: rf for f, rf in _declared().items() if f in allowed}
    example = (
        next(iter(declared.values())).example
        if declared
        else _EXAMPLES.get(
            allowed[0], "{prompt: question, chosen: good_answer, rejected: bad_answer}"
        )
    )
    shown = ", ".join(c or "(unnamed)" for c in columns) or "(none)"
    hint = (
        f"columns found: {shown}. Set data.format to one of {', '.join(allowed)} and map your "
        f"columns with data.columns (e.g. data.columns={example})"
    )
    if requested != "auto":
        required = [f for f in required_fields(requested) if not (labels_optional and f == "label")]
        lacking = [f for f in required if not _has(f, cols, mapping)]
        if lacking and columns:
            raise UserError(
                f"{where}: data.format is {requested} but no column for "
                f"{_missing(lacking, mapping)}; {hint}"
            )
        return requested

    def has(f: str) -> bool:
        return (labels_optional and f == "label") or _has(f, cols, mapping)

    for f, rf in declared.items():  # a task's own formats first: the most specific columns
        if all(has(x) for x in rf.required):
            return f
    if allowed == LABELLED:
        if has("text") and has("label"):
            return "pair_classification" if has("text_pair") else "classification"
        missing = [f for f in ("text", "label") if not has(f)]
        raise UserError(
            f"{where}: task {task} needs a text and a label column; no "
            f"column for {_missing(missing, mapping)}; {hint}"
        )
    if set(PREFERENCE) <= set(allowed):
        # Most specific first: a pairwise file may also carry chosen/rejected-like columns.
        for f in ("preference", "pairwise", "dialogue_pair"):
            if all(has(x) for x in REQUIRED[f]):
                return f
        own = "".join(f"{', '.join(rf.required)} ({f}) rows, or " for f, rf in declared.items())
        raise UserError(
            f"{where}: task {task} needs {own}preference pairs: prompt/chosen/rejected, "
            f"prompt/response_a/response_b/preference (a, b or tie), or chosen/rejected full "
            f"dialogues; {hint}"
        )
    if allowed == ("qa",):
        if has("context") and has("question"):
            return "qa"
        missing = [f for f in ("context", "question") if not has(f)]
        raise UserError(
            f"{where}: task qa needs SQuAD JSON or rows with context, question and answers; no "
            f"column for {_missing(missing, mapping)}; {hint}"
        )
    if allowed == ("prompt",):
        if has("prompt"):
            return "prompt"
        raise UserError(
            f"{where}: task {task} needs a prompt column (text or a list of messages); {hint}"
        )
    if declared:
        raise UserError(f"{where}: task {task} reads data.format {', '.join(allowed)}; {hint}")
    found = [f for f in ("chat", "instruction") if all(has(x) for x in REQUIRED[f])]
    if len(found) > 1:
        raise UserError(
            f"{where}: the rows look like both chat (messages) and instruction "
            f"(instruction/output) data; {hint}"
        )
    if found:
        return found[0]
    if has("text"):
        return "text"
    raise UserError(f"{where}: cannot tell the data format for task {task}; {hint}")


# ----- validation -------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _get(raw: dict[str, Any], f: str, mapping: dict[str, str]) -> Any:
    col = mapping.get(f, f)
    if col not in raw:
        via = f" (column '{col}' via data.columns)" if col != f else ""
        raise RowError(f"missing field '{f}'{via}", f"missing field '{f}'")
    return raw[col]


def _text(raw: dict[str, Any], f: str, mapping: dict[str, str], allow_empty: bool = False) -> str:
    v = _get(raw, f, mapping)
    if v is None and allow_empty:
        return ""
    if not isinstance(v, str):
        raise RowError(
            f"field '{f}' must be a string, got {_type_name(v)}", f"field '{f}' is not a string"
        )
    if has_surrogate(v):
        raise RowError(f"undecodable bytes (not valid UTF-8) in field '{f}'")
    if not allow_empty and not v.strip():
        raise RowError(f"field '{f}' is empty")
    return v


def label_str(v: Any) -> str:
    """A label as a string: 1 -> '1', 1.0 -> '1', 0.5 -> '0.5', True -> 'True'; else RowError."""
    if isinstance(v, str):
        if has_surrogate(v):
            raise RowError("undecodable bytes (not valid UTF-8) in field 'label'")
        s = v.strip()
    elif isinstance(v, bool) or isinstance(v, int):
        s = str(v)
    elif isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise RowError(f"field 'label' is {v}", "field 'label' is not a number")
        s = str(int(v)) if v.is_integer() else repr(v)
    elif v is None:
        raise RowError("field 'label' is null")
    else:
        raise RowError(
            f"field 'label' must be a string or number, got {_type_name(v)}",
            "field 'label' has a wrong type",
        )
    if not s:
        raise RowError("field 'label' is empty")
    return s


def _messages(raw: dict[str, Any], mapping: dict[str, str]) -> list[dict[str, str]]:
    out = parse_messages(_get(raw, "messages", mapping), "messages")
    check_chat(out)
    return out


def parse_messages(msgs: Any, field: str) -> list[dict[str, str]]:
    """A validated list of {role, content} (ShareGPT from/value accepted) from field's value.

    CSV cells may hold the list as JSON text. RowError names the field and message index.
    """
    if isinstance(msgs, str):  # CSV cells hold the list as JSON text
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            pass
    if not isinstance(msgs, list) or not msgs:
        got = "an empty list" if isinstance(msgs, list) else _type_name(msgs)
        raise RowError(
            f"field '{field}' must be a non-empty list of {{role, content}} objects, got {got}",
            f"field '{field}' is not a list of messages",
        )
    out = []
    for i, m in enumerate(msgs):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RowError(
                f"{where} must be an object with role and content, got {_type_name(m)}",
                "message is not an object",
            )
        if "role" in m or "content" in m:
            role, content = m.get("role"), m.get("content")
        else:  # ShareGPT: {"from": "human"|"gpt"|"system", "value": ...}
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower(), m.get("from"))
            content = m.get("value")
        if role not in ROLES:
            raise RowError(
                f"{where}: role {role!r} is not one of {', '.join(ROLES)}", "bad message role"
            )
        if not isinstance(content, str):
            raise RowError(
                f"{where}: content must be a string, got {_type_name(content)}",
                "message content is not a string",
            )
        if has_surrogate(content):
            raise RowError(
                f"undecodable bytes (not valid UTF-8) in field '{where}.content'",
                f"undecodable bytes (not valid UTF-8) in field '{field}'",
            )
        out.append({"role": role, "content": content})
    return out


def check_chat(messages: list[dict[str, str]]) -> None:
    """RowError unless some assistant turn has non-empty content (nothing to learn otherwise)."""
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RowError("no assistant turn with non-empty content in 'messages'")


def to_canonical(
    raw: dict[str, Any], schema: Schema, allowed_labels: list[str] | None = None
) -> dict[str, Any]:
    """The canonical row for a user row (without `_source`); RowError naming the bad field."""
    fmt, mapping = schema.format, schema.mapping
    row: dict[str, Any]
    if fmt not in REQUIRED:  # a format a task declares: its own normalizer
        from lmtune.tasks.spec import load_object

        row = load_object(_declared()[fmt].normalize)(raw, mapping)
    elif fmt in PREFERENCE:
        from lmtune.data.preference import preference_row

        row = preference_row(raw, fmt, mapping)
    elif fmt == "prompt":
        from lmtune.data.preference import prompt_row

        row = prompt_row(raw, mapping)
    elif fmt == "qa":
        from lmtune.data.squad import qa_row

        row = qa_row(raw, mapping, schema.labels_optional)
    elif fmt == "chat":
        row = {"messages": _messages(raw, mapping)}
    elif fmt == "instruction":
        row = {"instruction": _text(raw, "instruction", mapping)}
        # "input" is optional context: absent or null means none.
        has_input = mapping.get("input", "input") in raw
        row["input"] = _text(raw, "input", mapping, allow_empty=True) if has_input else ""
        row["output"] = _text(raw, "output", mapping)
    else:
        row = {"text": _text(raw, "text", mapping)}
        if fmt == "pair_classification":
            row["text_pair"] = _text(raw, "text_pair", mapping)
    if fmt in LABELLED:
        col = mapping.get("label", "label")
        if not (schema.labels_optional and raw.get(col) is None):
            label = label_str(_get(raw, "label", mapping))
            if allowed_labels is not None and label not in allowed_labels:
                raise RowError(
                    f"unknown label '{label}' (allowed: {', '.join(allowed_labels)})",
                    "unknown label",
                )
            row["label"] = label
    if schema.group_column is not None:
        if schema.group_column not in raw or raw[schema.group_column] is None:
            kind = f"missing field '{schema.group_column}'"
            raise RowError(f"{kind} (data.balance.column)", kind)
        group = raw[schema.group_column]
        if isinstance(group, (dict, list)):
            raise RowError(
                f"field '{schema.group_column}' (data.balance.column) must be a "
                f"string or number, got {_type_name(group)}"
            )
        row["_group"] = label_str(group) if not isinstance(group, str) else group.strip()
    return row


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def natural_labels(labels: Iterable[str]) -> list[str]:
    """Distinct labels sorted: numerically when all are numbers, else naturally (a2 < a10)."""
    uniq = list(dict.fromkeys(labels))
    if uniq and all(_NUMBER.fullmatch(s) for s in uniq):
        return sorted(uniq, key=lambda s: (float(s), s))

    def key(s: str) -> list[tuple[int, Any]]:
        return [(0, int(p)) if p.isdigit() else (1, p.lower()) for p in re.split(r"(\d+)", s)]

    return sorted(uniq, key=lambda s: (key(s), s))
