"""Extractive QA rows: SQuAD JSON (v1.1 and v2.0) flattened, validated and cleaned.

A SQuAD file nests questions in paragraphs in articles:
  {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
             "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}
The reader turns it into one record per question (row N = the N-th question of the file)
with the flat columns id, title, context, question, answers, is_impossible, so SQuAD files
and flat jsonl/csv rows go through the same validation. The canonical qa row is
  {"id"?, "title", "context", "question",
   "answers": {"text": [...], "answer_start": [...]}, "is_impossible": bool}
(answers in the Hugging Face `datasets` layout; empty lists for an unanswerable question).

Cleaning must not break answer offsets: the context is cleaned with a marker at every
answer boundary, and the answers are re-read from where the markers end up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from lmtune.data.formats import RowError
from lmtune.data.io import Record, has_surrogate

# A Unicode noncharacter: never in real text, untouched by NFC and the cleaning regexes.
_MARK = "\ufdd0"


def is_squad(obj: Any) -> bool:
    """True for a parsed SQuAD file: {"data": [ {..., "paragraphs": [...]}, ... ]}."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list) or not obj["data"]:
        return False
    first = obj["data"][0]
    return isinstance(first, dict) and "paragraphs" in first


def _bad(path: str, n: int, where: str, what: str, raw: Any) -> Record:
    kind = f"malformed SQuAD {what}"
    return Record(path, n, None, f"{where}: {kind}", kind, raw)


def squad_records(path: str, articles: list[Any], limit: int | None = None) -> list[Record]:
    """One record per question of a SQuAD file's `data` list (at most `limit`).

    Structure that cannot hold questions (an article without a paragraphs list, a paragraph
    without a qas list, a question that is not an object) becomes an unparseable record that
    names its place (data[i].paragraphs[j].qas[k]), so the rest of the file is still read.
    """
    out: list[Record] = []

    def full() -> bool:
        return limit is not None and len(out) >= limit

    for i, art in enumerate(articles):
        paras = art.get("paragraphs") if isinstance(art, dict) else None
        if not isinstance(paras, list):
            out.append(
                _bad(path, len(out) + 1, f"data[{i}]", "article (no 'paragraphs' list)", art)
            )
            if full():
                return out
            continue
        title = art.get("title", "")
        for j, para in enumerate(paras):
            qas = para.get("qas") if isinstance(para, dict) else None
            if not isinstance(qas, list):
                where = f"data[{i}].paragraphs[{j}]"
                out.append(_bad(path, len(out) + 1, where, "paragraph (no 'qas' list)", para))
                if full():
                    return out
                continue
            for k, qa in enumerate(qas):
                n = len(out) + 1
                if not isinstance(qa, dict):
                    out.append(
                        _bad(
                            path,
                            n,
                            f"data[{i}].paragraphs[{j}].qas[{k}]",
                            "question (not an object)",
                            qa,
                        )
                    )
                else:
                    row = {
                        "id": qa.get("id"),
                        "title": title,
                        "context": para.get("context"),
                        "question": qa.get("question"),
                        "answers": qa.get("answers", []),
                    }
                    if "is_impossible" in qa:
                        row["is_impossible"] = qa["is_impossible"]
                    out.append(Record(path, n, row))
                if full():
                    return out
    return out


# ----- validation -----------------------------------------------------------------------


def _string(raw: dict[str, Any], field: str, mapping: dict[str, str]) -> str:
    col = mapping.get(field, field)
    if col not in raw:
        via = f" (column '{col}' via data.columns)" if col != field else ""
        raise RowError(f"missing field '{field}'{via}", f"missing field '{field}'")
    v = raw[col]
    if not isinstance(v, str):
        got = "null" if v is None else type(v).__name__
        raise RowError(
            f"field '{field}' must be a string, got {got}", f"field '{field}' is not a string"
        )
    if has_surrogate(v):
        raise RowError(f"undecodable bytes (not valid UTF-8) in field '{field}'")
    if not v.strip():
        raise RowError(f"field '{field}' is empty")
    return v


def _start(v: Any, i: int) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():  # CSV cells are text
        v = int(v)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RowError(
            f"answers[{i}].answer_start must be an integer character offset, got {v!r}",
            "answer_start is not an integer",
        )
    return v


def _answer_list(value: Any) -> list[tuple[Any, Any]]:
    """(text, answer_start) pairs from SQuAD's list of objects or datasets' dict of lists."""
    if isinstance(value, str):  # CSV cells hold the answers as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(
                "field 'answers' is text but not JSON; write it as "
                '[{"text": ..., "answer_start": ...}]',
                "answers is not JSON",
            ) from None
    if isinstance(value, dict) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise RowError(
                "answers.text and answers.answer_start must be lists of equal length",
                "answers lists differ in length",
            )
        return list(zip(texts, starts, strict=True))
    if isinstance(value, list):
        pairs = []
        for i, a in enumerate(value):
            if not isinstance(a, dict) or "text" not in a or "answer_start" not in a:
                raise RowError(
                    f"answers[{i}] must be an object with text and answer_start",
                    "answer is not {text, answer_start}",
                )
            pairs.append((a["text"], a["answer_start"]))
        return pairs
    raise RowError(
        "field 'answers' must be a list of {text, answer_start} objects or "
        "{text: [...], answer_start: [...]}",
        "answers has a wrong type",
    )


def _check_answer(context: str, text: Any, start: Any, i: int) -> tuple[str, int]:
    """A validated (text, start), stripped of surrounding whitespace; RowError if misplaced."""
    if not isinstance(text, str) or not text.strip():
        raise RowError(f"answers[{i}].text must be a non-empty string", "empty answer text")
    start = _start(start, i)
    if context[start : start + len(text)] != text:
        found = context.find(text)
        hint = (
            f"the text occurs at {found}"
            if found >= 0
            else "the text does not occur in the context"
        )
        raise RowError(
            f"answers[{i}].answer_start {start} does not point at the answer {text[:60]!r} in the "
            f"context (context[{start}:{start + len(text)}] is "
            f"{context[max(start, 0) : start + len(text)][:60]!r}; {hint}); fix answer_start",
            "answer_start does not match the context",
        )
    lead = len(text) - len(text.lstrip())
    return text.strip(), start + lead


def _flag(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    raise RowError(
        f"field 'is_impossible' must be true or false, got {v!r}", "is_impossible is not a boolean"
    )


def qa_row(
    raw: dict[str, Any], mapping: dict[str, str], answers_optional: bool = False
) -> dict[str, Any]:
    """The canonical qa row for a flat user row; RowError naming the field when it is invalid.

    answers_optional: prediction inputs may have no answers (the row then has none).
    """
    context = _string(raw, "context", mapping)
    question = _string(raw, "question", mapping)
    row: dict[str, Any] = {}
    qid = raw.get(mapping.get("id", "id"))
    if qid is not None:
        row["id"] = str(qid)
    title = raw.get(mapping.get("title", "title"))
    row["title"] = str(title) if title is not None else ""
    row["context"], row["question"] = context, question
    ans_col = mapping.get("answers", "answers")
    imp_col = mapping.get("is_impossible", "is_impossible")
    if raw.get(ans_col) is None and answers_optional:
        return row
    if ans_col not in raw:
        raise RowError(
            "missing field 'answers' (a list of {text, answer_start}; [] when the "
            "question has no answer)",
            "missing field 'answers'",
        )
    pairs = _answer_list(raw[ans_col] if raw[ans_col] is not None else [])
    impossible = _flag(raw[imp_col]) if raw.get(imp_col) is not None else not pairs
    if impossible and pairs:
        raise RowError(
            f"is_impossible is true but answers has {len(pairs)} answer(s); empty the "
            "answers or set is_impossible false",
            "is_impossible with answers",
        )
    if not impossible and not pairs:
        raise RowError(
            "answers is empty but is_impossible is false; add the answer or set is_impossible true",
            "no answer",
        )
    checked = [_check_answer(context, t, s, i) for i, (t, s) in enumerate(pairs)]
    row["answers"] = {"text": [t for t, _ in checked], "answer_start": [s for _, s in checked]}
    row["is_impossible"] = impossible
    return row


# ----- cleaning ----------------------------------------------------------------------------


def clean_qa(row: dict[str, Any], clean: Callable[[str], str]) -> None:
    """Clean question and context in place, keeping every answer on its span.

    A marker goes in at each answer boundary before `clean` runs over the context; the answers
    are then re-read between their markers (their text follows the cleaning too, e.g. a
    collapsed double space). RowError when a field ends up empty or cleaning (PII redaction)
    swallowed an answer boundary.
    """
    row["question"] = clean(row["question"])
    if not row["question"].strip():
        raise RowError("field 'question' is empty after cleaning", "empty after cleaning")
    context = row["context"]
    answers = row.get("answers") or {"text": [], "answer_start": []}
    if _MARK in context:
        raise RowError("the context contains U+FDD0 (a Unicode noncharacter); remove it")
    spans = [(s, s + len(t)) for t, s in zip(answers["text"], answers["answer_start"], strict=True)]
    cuts = sorted({p for span in spans for p in span})
    marked = context
    for p in reversed(cuts):
        marked = marked[:p] + _MARK + marked[p:]
    cleaned = clean(marked)
    where = [i for i, ch in enumerate(cleaned) if ch == _MARK]
    if len(where) != len(cuts):
        raise RowError(
            "cleaning (PII/secret redaction) changed an answer span; set "
            "data.clean.pii and data.clean.secrets to false for this data",
            "answer changed by cleaning",
        )
    moved = {p: w - k for k, (p, w) in enumerate(zip(cuts, where, strict=True))}
    text = cleaned.replace(_MARK, "")
    if text != clean(context):
        # A marker kept a pattern from matching (e.g. an answer inside an e-mail address that
        # redaction would replace): keeping the row would leak what cleaning must remove.
        raise RowError(
            "an answer overlaps text that cleaning rewrites (personal data or a secret "
            "that data.clean.pii/secrets redact); the row cannot keep both",
            "answer changed by cleaning",
        )
    if not text.strip():
        raise RowError("field 'context' is empty after cleaning", "empty after cleaning")
    new_text, new_start = [], []
    for s, e in spans:
        span = text[moved[s] : moved[e]]
        if not span.strip():
            raise RowError("an answer is empty after cleaning", "answer changed by cleaning")
        new_text.append(span.strip())
        new_start.append(moved[s] + len(span) - len(span.lstrip()))
    row["context"] = text
    if "answers" in row:
        row["answers"] = {"text": new_text, "answer_start": new_start}
