"""Bounds that keep one huge row or a huge eval split from costing what the run cannot use.

A 10 MB row trained with max_length 32 used to cost gigabytes (MinHash shingles, token
lists of two million words) for 32 tokens. No tokenizer in use packs more than
CHARS_PER_TOKEN characters into one token, so a text field longer than that many characters
per max_length token holds more than any encoder keeps; it is cut early, keeping its first
and its last `limit` characters, since encoders keep the start (SFT, classification) or the
end (left-truncating tokenizers) of a text, never the middle of one this long.
"""

from __future__ import annotations

from typing import Any

# Generous on purpose: BPE vocabularies hold long runs of spaces or punctuation, but no
# token of a real vocabulary is anywhere near 32 characters on average over a text.
CHARS_PER_TOKEN = 32


def char_limit(max_length: int) -> int:
    """Characters kept from each end of an over-long text field for model.max_length tokens."""
    return max_length * CHARS_PER_TOKEN


def _cut(value: Any, limit: int) -> tuple[Any, bool]:
    """value with every string longer than 2*limit cut to head + tail (nested lists/dicts)."""
    if isinstance(value, str):
        if len(value) > 2 * limit:
            return value[:limit] + value[-limit:], True
        return value, False
    if isinstance(value, list):
        out, changed = [], False
        for v in value:
            v2, c = _cut(v, limit)
            out.append(v2)
            changed |= c
        return (out, True) if changed else (value, False)
    if isinstance(value, dict):
        pairs = {k: _cut(v, limit) for k, v in value.items()}
        if any(c for _, c in pairs.values()):
            return {k: v for k, (v, _) in pairs.items()}, True
        return value, False
    return value, False


def truncate_row(row: dict[str, Any], limit: int) -> bool:
    """Cut over-long text fields of a canonical row in place; True when anything was cut.

    Keys starting with "_" (the source, the origin kept for rejects.jsonl) are left alone.
    """
    changed = False
    for key in [k for k in row if not k.startswith("_")]:
        value, c = _cut(row[key], limit)
        if c:
            row[key] = value
            changed = True
    return changed


def announce_truncated(count: int, limit: int, max_length: int) -> None:
    """The console line for rows cut by truncate_row (nothing when none were)."""
    if not count:
        return
    from lmtune.runtime.dist import Dist

    Dist.get().print(
        f"{count:,} row(s) have a text field over {2 * limit:,} characters, more than "
        f"model.max_length={max_length} tokens can use: kept with that field cut to its first "
        f"and last {limit:,} characters"
    )


def cap_eval(idx: dict[str, list[int]], cap: int | None) -> dict[str, list[int]]:
    """Split indices with the eval part cut to `cap` rows (the rest goes back to train).

    A 10% eval split of 200k rows is 20k rows, evaluated before training and at every
    eval_every: mostly time spent measuring the same thing more precisely than needed.
    """
    ev = idx["eval"]
    if cap is None or len(ev) <= cap:
        return idx
    from lmtune.runtime.dist import Dist

    # idx["eval"] is sorted; an evenly spaced subset keeps the split's seeded randomness and
    # its label proportions (stratified splits interleave labels across the index range).
    step = len(ev) / cap
    keep = {ev[int(i * step)] for i in range(cap)}
    Dist.get().print(
        f"eval split capped at {cap:,} rows (data.split.eval would give {len(ev):,}); the other "
        f"{len(ev) - cap:,} stay in train. data.split.max_eval_rows changes the cap."
    )
    return {
        **idx,
        "eval": sorted(keep),
        "train": sorted(idx["train"] + [i for i in ev if i not in keep]),
    }
