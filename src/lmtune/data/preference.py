"""Preference pairs: three input shapes, one canonical row.

Canonical row: {"prompt": str or [messages], "chosen": str, "rejected": str} (+ "margin"
when the file has one). Input shapes (data.format, auto-detected for tasks reward/dpo/orpo):

  preference     prompt / chosen / rejected. Responses are strings, or message lists whose
                 last message is the assistant's answer; turns before it must be the same in
                 chosen and rejected and are appended to the prompt (TRL's conversational form).
  pairwise       prompt / response_a / response_b / preference in {a, b, tie, skip}. Ties carry
                 no preferred response and skips (written by `lmtune feedback` when the rater
                 passed) no judgement: both are marked here and dropped (and counted, with
                 their reason) by the pipeline's tie stage, so they never count as invalid rows.
  dialogue_pair  chosen / rejected full dialogues that share every turn but the last, either
                 HH-RLHF strings ("\\n\\nHuman: ...\\n\\nAssistant: ...": the prompt is everything
                 up to and including the last "\\n\\nAssistant:") or message lists.

Prompts only (data.format prompt, task rlhf): {"prompt": str or [messages]}; see prompt_row.

Every problem is a RowError naming the field, so the row lands in rejects.jsonl.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lmtune.data.formats import RowError, _get, _text, _type_name, parse_messages

ASSISTANT_MARKER = "\n\nAssistant:"
# Accepted spellings of the pairwise preference (lower-cased): Chatbot Arena writes model_a.
CHOICES = {
    "a": "a",
    "response_a": "a",
    "model_a": "a",
    "b": "b",
    "response_b": "b",
    "model_b": "b",
    "tie": "tie",
    "tie (bothbad)": "tie",
    "both": "tie",
    "equal": "tie",
    "skip": "skip",
    "skipped": "skip",
}
TIE = "_tie"  # marker key on rows whose preference is a tie (dropped by the pipeline)
SKIP = "_skip"  # marker key on rows the rater skipped (dropped by the pipeline)
Messages = list[dict[str, str]]


def _maybe_messages(value: Any, field: str) -> Any:
    """value as a message list when it is one (or JSON text of one), else unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            return parse_messages(parsed, field)
        return value
    if isinstance(value, list):
        return parse_messages(value, field)
    return value


def _field(raw: dict[str, Any], f: str, mapping: dict[str, str]) -> str | Messages:
    value = _maybe_messages(_get(raw, f, mapping), f)
    if isinstance(value, list):
        return value
    # Responses may be empty here: the check below reports "empty" with a clearer reason.
    return (
        _text(raw, f, mapping, allow_empty=True) if isinstance(value, str) else _bad_type(f, value)
    )


def _bad_type(f: str, value: Any) -> str:
    raise RowError(
        f"field '{f}' must be a string or a list of {{role, content}} messages, got "
        f"{_type_name(value)}",
        f"field '{f}' has a wrong type",
    )


def _last_turn(messages: Messages, field: str) -> str:
    if messages[-1]["role"] != "assistant":
        raise RowError(
            f"the last message of '{field}' must be the assistant's response, got role "
            f"{messages[-1]['role']!r}",
            "response is not an assistant turn",
        )
    return messages[-1]["content"]


def split_message_pair(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """(shared turns, chosen answer, rejected answer) of two message lists; RowError unless
    they share every turn but the last, which must be the assistant's."""
    if chosen[:-1] != rejected[:-1]:
        raise RowError(
            "'chosen' and 'rejected' must share every message but the last (they differ earlier)",
            "chosen and rejected differ before the last turn",
        )
    return chosen[:-1], _last_turn(chosen, "chosen"), _last_turn(rejected, "rejected")


def split_dialogue(text: str, field: str) -> tuple[str, str]:
    """(prompt up to and including the last Assistant marker, the response after it)."""
    cut = text.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise RowError(
            f"field '{field}' has no '\\n\\nAssistant:' turn: dialogue_pair strings must be "
            "HH-RLHF style transcripts (or use prompt/chosen/rejected columns)",
            "no Assistant turn in dialogue",
        )
    cut += len(ASSISTANT_MARKER)
    return text[:cut], text[cut:]


def _dialogue_pair(chosen: str | Messages, rejected: str | Messages) -> tuple[Any, str, str]:
    if isinstance(chosen, list) and isinstance(rejected, list):
        shared, c, r = split_message_pair(chosen, rejected)
        if not shared:
            raise RowError(
                "dialogue_pair messages have no turn before the response (no prompt)",
                "no prompt in dialogue",
            )
        return shared, c, r
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt_c, c = split_dialogue(chosen, "chosen")
        prompt_r, r = split_dialogue(rejected, "rejected")
        if prompt_c != prompt_r:
            raise RowError(
                "'chosen' and 'rejected' dialogues differ before their last '\\n\\nAssistant:' "
                "turn (they must share every turn but the last)",
                "chosen and rejected differ before the last turn",
            )
        return prompt_c, c, r
    raise RowError(
        "'chosen' and 'rejected' must both be strings or both message lists",
        "chosen and rejected have different types",
    )


def _explicit(
    prompt: str | Messages, chosen: str | Messages, rejected: str | Messages
) -> tuple[Any, str, str]:
    if isinstance(prompt, str) and not prompt.strip():
        raise RowError("field 'prompt' is empty")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise RowError(
            "the prompt's last message is an assistant turn: the response would "
            "continue it; end the prompt with a user turn",
            "prompt ends with an assistant turn",
        )
    if isinstance(chosen, str) and isinstance(rejected, str):
        return prompt, chosen, rejected
    if isinstance(chosen, list) and isinstance(rejected, list):
        shared, c, r = split_message_pair(chosen, rejected)
        if shared and isinstance(prompt, str):
            raise RowError(
                "a text prompt cannot be followed by earlier message turns in "
                "'chosen'/'rejected'; give the prompt as messages too",
                "text prompt with message responses",
            )
        return (prompt + shared if isinstance(prompt, list) else prompt), c, r
    raise RowError(
        "'chosen' and 'rejected' must both be strings or both message lists",
        "chosen and rejected have different types",
    )


def _choice(raw: dict[str, Any], mapping: dict[str, str]) -> str:
    value = _get(raw, "preference", mapping)
    key = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if key not in CHOICES:
        raise RowError(
            f"field 'preference' must be a, b, tie or skip, got {value!r}",
            "field 'preference' is not a, b, tie or skip",
        )
    return CHOICES[key]


def _margin(raw: dict[str, Any], mapping: dict[str, str]) -> float | None:
    col = mapping.get("margin", "margin")
    if raw.get(col) is None:
        return None
    v = raw[col]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RowError(
            f"field 'margin' must be a finite number, got {v!r}", "field 'margin' is not a number"
        )
    return float(v)


def check_preference(row: dict[str, Any]) -> None:
    """RowError when a canonical pair teaches nothing: an empty response or chosen == rejected."""
    for f in ("chosen", "rejected"):
        if not row[f].strip():
            raise RowError(f"field '{f}' is empty (no response)", f"field '{f}' is empty")
    if row["chosen"].strip() == row["rejected"].strip():
        raise RowError("'chosen' and 'rejected' are the same response", "chosen equals rejected")


def preference_row(raw: dict[str, Any], fmt: str, mapping: dict[str, str]) -> dict[str, Any]:
    """The canonical preference row for one user row of format fmt; RowError when invalid."""
    tie = False
    if fmt == "pairwise" and _choice(raw, mapping) == "skip":
        # No judgement to check: keep the fields as they are (the responses may even be
        # identical) and let the pipeline drop the row with its reason.
        return {
            "prompt": _field(raw, "prompt", mapping),
            "chosen": _field(raw, "response_a", mapping),
            "rejected": _field(raw, "response_b", mapping),
            SKIP: True,
        }
    if fmt == "dialogue_pair":
        prompt, chosen, rejected = _dialogue_pair(
            _field(raw, "chosen", mapping), _field(raw, "rejected", mapping)
        )
    else:
        prompt = _field(raw, "prompt", mapping)
        if fmt == "pairwise":
            choice = _choice(raw, mapping)
            a, b = _field(raw, "response_a", mapping), _field(raw, "response_b", mapping)
            tie = choice == "tie"
            prompt, chosen, rejected = _explicit(prompt, *((b, a) if choice == "b" else (a, b)))
        else:
            prompt, chosen, rejected = _explicit(
                prompt, _field(raw, "chosen", mapping), _field(raw, "rejected", mapping)
            )
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    check_preference(row)
    margin = _margin(raw, mapping)
    if margin is not None:
        row["margin"] = margin
    if tie:
        row[TIE] = True
    return row


def prompt_row(raw: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The canonical prompts-only row {"prompt": str or messages} (task rlhf); RowError when
    the prompt is missing, empty, or a message list ending with an assistant turn."""
    prompt = _field(raw, "prompt", mapping)
    if isinstance(prompt, str) and not prompt.strip():
        raise RowError("field 'prompt' is empty")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise RowError(
            "the prompt's last message is an assistant turn: a completion would continue it; "
            "end the prompt with a user turn",
            "prompt ends with an assistant turn",
        )
    return {"prompt": prompt}
