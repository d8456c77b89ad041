"""Row-level cleaning: unicode/whitespace normalisation, control characters, PII, length.

Every function here looks at one row at a time; duplicates (which need all rows) live in
dedupe.py. Cleaning touches every text field of a row (instruction/input/output, message
contents, text/text_pair) but never labels beyond stripping them at validation.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from lmtune.config import CleanConfig
from lmtune.data.formats import FORMATS, PREFERENCE, RowError, check_chat, content_fields
from lmtune.data.pii import Redactor

# Horizontal whitespace: spaces, tabs and the unicode space separators (NBSP, thin space, ...).
_ODD_SPACE = "\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_HSPACE = f"[ {_ODD_SPACE}]"
# After a non-space: a run of 2+ spaces, or any single non-plain space (leading indent kept).
_INNER_SPACE = re.compile(rf"(?<=\S){_HSPACE}{{2,}}|(?<=\S)[{_ODD_SPACE}]")
_TRAILING_SPACE = re.compile(rf"{_HSPACE}+(?=\n)")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# C0/C1 control characters except \t and \n, plus DEL and the byte-order mark.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
# Fields that must stay non-empty after cleaning (input may be empty by definition).
_REQUIRED_TEXT = ("text", "text_pair", "instruction", "output", "prompt", "chosen", "rejected")


def normalize_text(text: str) -> str:
    """NFC, CRLF -> LF, runs of spaces/tabs -> one space, 3+ newlines -> 2, strip.

    Leading indentation of each line is kept: collapsing it would break code in SFT data
    (Python blocks, YAML). Trailing spaces before a newline are dropped.
    """
    # Each step runs only where it can match (plain substring tests, exact for ASCII text):
    # on a million rows the regexes were most of the cleaning time, nearly all of it no-ops.
    plain = text.isascii()
    if not plain:
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not plain or "  " in text or "\t" in text:
        text = _INNER_SPACE.sub(" ", text)
    if not plain or " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("", text)
    if "\n\n\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def remove_control(text: str) -> str:
    """Drop control characters but keep newlines and tabs (a lone CR becomes a newline)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # isprintable() is False for every control character and the BOM (and for \n, \t).
    return text if text.isprintable() else _CONTROL.sub("", text)


def text_fields(row: dict[str, Any], fmt: str) -> list[str]:
    """The text values of a canonical row in a fixed order (chat: role-tagged contents)."""
    if fmt == "chat":
        return [m["content"] for m in row["messages"]]
    out: list[str] = []
    for f in content_fields(fmt):  # a preference prompt may be a message list
        value = row[f]
        if isinstance(value, list):
            out.extend(m["content"] for m in value)
        else:
            out.append(value)
    return out


def main_text(row: dict[str, Any], fmt: str) -> str:
    """The text that length limits and length statistics measure: all text fields joined."""
    return "\n".join(t for t in text_fields(row, fmt) if t)


def content_key(row: dict[str, Any], fmt: str) -> str:
    """What exact dedupe and leakage compare: the content fields (never the label)."""
    if fmt == "chat":
        return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in row["messages"])
    return "\x1e".join(
        _messages_key(row[f]) if isinstance(row[f], list) else row[f] for f in content_fields(fmt)
    )


def _messages_key(messages: list[dict[str, str]]) -> str:
    return "\x1d".join(f"{m['role']}\x1f{m['content']}" for m in messages)


class RowCleaner:
    """Applies the CleanConfig's per-row steps to canonical rows, in place.

    PII and secrets are redacted only in mode "redact"; in mode "detect" (the default) the
    same patterns only count what they find and where, so the user's text is never changed
    without being asked. `changed_rows` counts rows that normalisation or control-character
    removal edited, so the pipeline can say so.
    """

    MAX_EXAMPLES = 5  # locations kept for the console and the report

    def __init__(self, cfg: CleanConfig, redact: bool = True) -> None:
        """redact=False skips PII/secret redaction and detection (eval/predict inputs)."""
        self.cfg = cfg
        self.redactor = Redactor(
            pii=cfg.pii == "redact" and redact, secrets=cfg.secrets == "redact" and redact
        )
        self.detector = Redactor(
            pii=cfg.pii == "detect" and redact, secrets=cfg.secrets == "detect" and redact
        )
        self.changed_rows = 0
        self.pii_rows = 0
        self.examples: list[dict[str, Any]] = []
        self._changed = False

    def _one(self, text: str) -> str:
        before = text
        if self.cfg.control_chars:
            text = remove_control(text)
        if self.cfg.normalize:
            text = normalize_text(text)
        self._changed |= text != before
        if self.redactor.enabled:
            text = self.redactor(text)
        if self.detector.enabled:
            self.detector(text)  # counts only: the text is kept as it is
        return text

    def __call__(self, row: dict[str, Any], fmt: str) -> None:
        """Clean every text field; RowError when a required field ends up empty."""
        seen = self.redactor.counts + self.detector.counts
        self._changed = False
        try:
            self._clean(row, fmt)
        finally:
            self.changed_rows += self._changed
            found = (self.redactor.counts + self.detector.counts) - seen
            if found:
                self.pii_rows += 1
                if len(self.examples) < self.MAX_EXAMPLES:
                    where = row.get("_source", "?")
                    self.examples.append({"row": where, "kinds": dict(sorted(found.items()))})

    def _clean(self, row: dict[str, Any], fmt: str) -> None:
        if fmt == "qa":  # the context carries answer offsets that cleaning must move along
            from lmtune.data.squad import clean_qa

            clean_qa(row, self._one)
            return
        if fmt == "chat":
            for m in row["messages"]:
                m["content"] = self._one(m["content"])
            try:
                check_chat(row["messages"])
            except RowError:
                raise RowError(
                    "no assistant turn with non-empty content after cleaning",
                    "empty after cleaning",
                ) from None
            return
        for f in content_fields(fmt):
            if isinstance(row[f], list):  # a preference prompt given as messages
                for m in row[f]:
                    m["content"] = self._one(m["content"])
                continue
            row[f] = self._one(row[f])
            # Every text field of a task-declared format is required (its spec lists them).
            if (f in _REQUIRED_TEXT or fmt not in FORMATS) and not row[f].strip():
                raise RowError(f"field '{f}' is empty after cleaning", "empty after cleaning")
        if fmt in PREFERENCE:
            from lmtune.data.preference import check_preference

            try:
                check_preference(row)
            except RowError as e:  # e.g. responses that differed only in whitespace
                raise RowError(f"{e.reason} after cleaning", f"{e.kind} after cleaning") from None

    def tally(self) -> tuple[Any, ...]:
        """What this cleaner counted, as plain values (a worker process sends it back)."""
        return (
            self.redactor.counts,
            self.detector.counts,
            self.changed_rows,
            self.pii_rows,
            self.examples,
        )

    def merge(self, tally: tuple[Any, ...]) -> None:
        """Add the tally of a cleaner that worked on the rows after these (a worker's)."""
        redacted, detected, changed, pii_rows, examples = tally
        self.redactor.counts += redacted
        self.detector.counts += detected
        self.changed_rows += changed
        self.pii_rows += pii_rows
        self.examples += examples[: self.MAX_EXAMPLES - len(self.examples)]

    def redactions(self) -> dict[str, int]:
        """Replacements per kind so far (mode redact)."""
        return self.redactor.report()

    def detections(self) -> dict[str, Any]:
        """What mode detect found (and left unchanged): counts per kind, rows, first rows."""
        return {
            "mode": {"pii": self.cfg.pii, "secrets": self.cfg.secrets},
            "found": {k: n for k, n in self.detector.report().items() if n},
            "redacted": {k: n for k, n in self.redactor.report().items() if n},
            "rows": self.pii_rows,
            "examples": self.examples,
        }


def length_problem(
    row: dict[str, Any], fmt: str, min_chars: int, max_chars: int | None
) -> RowError | None:
    """A RowError when the main text is outside [min_chars, max_chars], else None."""
    n = len(main_text(row, fmt))
    if n < min_chars:
        return RowError(
            f"main text has {n} characters, below data.clean.min_chars={min_chars}",
            "shorter than min_chars",
        )
    if max_chars is not None and n > max_chars:
        return RowError(
            f"main text has {n} characters, above data.clean.max_chars={max_chars}",
            "longer than max_chars",
        )
    return None
