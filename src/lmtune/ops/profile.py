"""The training-data profile (data_profile.json) and the same statistics for a live batch.

`lmtune train` writes the profile of its train split into the saved model folder, so a
released model carries what "normal input" looked like: token lengths, the word vocabulary,
the tokenizer's unknown-token rate and the label distribution. `lmtune monitor` computes
batch_stats for every new batch (a labelled file, or the inputs and predicted labels of a
serving log: read_prediction_log) and compares the two with ops/drift.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune.atomic import atomic_write_text
from lmtune.errors import UserError
from lmtune.ops.drift import oov_rate, value_counts, words

PROFILE_FILE = "data_profile.json"
PROFILE_VERSION = 1
QUANTILES = (0.5, 0.9, 0.99)
_TOKENIZE_CHUNK = 1024  # texts per tokenizer call: fast tokenizers batch well, memory stays flat


def row_text(row: dict[str, Any]) -> str:
    """The text a model reads from a canonical row of any format, joined with spaces."""
    if "messages" in row:
        parts = [m["content"] for m in row["messages"]]
    elif "prompt" in row:
        prompt = row["prompt"]
        prompt = " ".join(m["content"] for m in prompt) if isinstance(prompt, list) else prompt
        parts = [prompt] + [row[k] for k in ("chosen", "rejected") if isinstance(row.get(k), str)]
    else:
        parts = [
            row[k]
            for k in ("text", "text_pair", "question", "context", "instruction", "input", "output")
            if isinstance(row.get(k), str) and row[k]
        ]
    return " ".join(parts)


def token_counts(texts: Sequence[str], tokenizer: Any) -> tuple[list[int], int]:
    """Token length of every text (no special tokens, no truncation) and the number of unknown tokens."""
    unk = getattr(tokenizer, "unk_token_id", None)
    lengths: list[int] = []
    unknown = 0
    for i in range(0, len(texts), _TOKENIZE_CHUNK):
        ids = tokenizer(
            list(texts[i : i + _TOKENIZE_CHUNK]), add_special_tokens=False, verbose=False
        )["input_ids"]
        lengths += [len(x) for x in ids]
        if unk is not None:
            unknown += sum(x.count(unk) for x in ids)
    return lengths, unknown


def length_summary(lengths: Sequence[int]) -> dict[str, Any]:
    """Histogram (length -> count; JSON keys are strings), mean and quantiles of token lengths."""
    ordered = sorted(lengths)
    n = len(ordered)
    quant = {f"p{round(q * 100)}": ordered[min(n - 1, int(q * n))] if n else 0 for q in QUANTILES}
    counts = {str(k): v for k, v in sorted(value_counts(ordered).items())}
    return {
        "counts": counts,
        "mean": sum(ordered) / n if n else 0.0,
        **quant,
        "max": ordered[-1] if n else 0,
    }


def reference_oov_rate(docs: Sequence[list[str]], vocab: set[str]) -> float:
    """Leave-one-row-out OOV rate of the training rows against their own vocabulary.

    A word counts as unseen when it is outside vocab or occurs in no other row. Measured on
    the rows the vocabulary came from, the plain OOV rate would be ~0 and every fresh batch
    would look drifted; this estimates what held-out text from the same source scores.
    """
    doc_freq = Counter(w for doc in docs for w in set(doc))
    total = sum(len(doc) for doc in docs)
    unseen = sum(1 for doc in docs for w in doc if w not in vocab or doc_freq[w] == 1)
    return unseen / total if total else 0.0


def data_profile(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    labels: Sequence[str] | None,
    vocab_size: int = 20000,
) -> dict[str, Any]:
    """Profile of training rows: token lengths, top-`vocab_size` word vocabulary (for OOV),
    unknown-token rate and label distribution (None for tasks without labels)."""
    texts = [row_text(r) for r in rows]
    lengths, unknown = token_counts(texts, tokenizer)
    docs = [words(t) for t in texts]
    freq = Counter(w for doc in docs for w in doc)
    vocab = [w for w, _ in freq.most_common(vocab_size)]
    label_counts = None
    if labels:
        seen = Counter(str(r["label"]) for r in rows if r.get("label") is not None)
        label_counts = {lab: seen.get(lab, 0) for lab in labels}
    return {
        "format_version": PROFILE_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": len(rows),
        "length": length_summary(lengths),
        "unk_rate": unknown / max(sum(lengths), 1),
        "vocab": {
            "size": len(vocab),
            "distinct_words": len(freq),
            "total_words": sum(freq.values()),
            "reference_oov_rate": reference_oov_rate(docs, set(vocab)),
            "words": vocab,
        },
        "labels": label_counts,
    }


def batch_stats(
    texts: Sequence[str],
    tokenizer: Any,
    vocab: set[str] | None,
    labels: Sequence[str] | None = None,
    preds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The profile's statistics for one batch of inputs (gold labels and predictions optional)."""
    lengths, unknown = token_counts(texts, tokenizer)
    tokens = [w for t in texts for w in words(t)]
    return {
        "n": len(texts),
        "length": length_summary(lengths),
        "unk_rate": unknown / max(sum(lengths), 1),
        "words": len(tokens),
        "oov_rate": oov_rate(tokens, vocab) if vocab is not None else None,
        "label_counts": dict(sorted(value_counts(labels).items())) if labels else None,
        "pred_counts": dict(sorted(value_counts(preds).items())) if preds else None,
    }


def write_profile(
    model_dir: Path,
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    labels: Sequence[str] | None,
    vocab_size: int = 20000,
) -> Path:
    """Write data_profile.json into a saved model folder (via a temp file: never half-written)."""
    path = Path(model_dir) / PROFILE_FILE
    atomic_write_text(path, json.dumps(data_profile(rows, tokenizer, labels, vocab_size)) + "\n")
    return path


def read_json_file(path: Path, fix: str) -> Any:
    """The parsed JSON of path; None when absent; UserError (naming fix) when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {fix}") from None


def read_profile(model_dir: Path) -> dict[str, Any] | None:
    """data_profile.json of a model folder; None when the model was saved without one."""
    path = Path(model_dir) / PROFILE_FILE
    profile = read_json_file(path, "retrain or copy it again from the run's model/")
    if profile is None:
        return None
    if profile.get("format_version") != PROFILE_VERSION:
        raise UserError(
            f"{path} has format_version {profile.get('format_version')!r}; this lmtune "
            f"reads version {PROFILE_VERSION} (retrain with this lmtune)"
        )
    return profile


def _log_texts(value: Any) -> list[str]:
    """Input texts of one serving-log entry: a string, {text, text_pair}, messages, or a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [row_text(value)]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "content" in m for m in value)
    ):
        return [row_text({"messages": value})]  # a chat conversation is one input
    if isinstance(value, list):
        return [t for v in value for t in _log_texts(v)]
    return []


def _log_labels(entry: dict[str, Any], known: set[str]) -> list[str | None]:
    """Predicted labels of a log entry (only values that are labels of the model count)."""
    for key in ("label", "output", "prediction"):
        value = entry.get(key)
        if isinstance(value, dict):
            value = value.get("label", value.get("labels"))
        items = value if isinstance(value, list) else [value]
        labels = [v.get("label") if isinstance(v, dict) else v for v in items]
        if value is not None and all(isinstance(v, str) and v in known for v in labels):
            return labels
    return []


def read_prediction_log(
    path: Path, labels: list[str] | None, version: str | None = None, max_bad_fraction: float = 0.1
) -> tuple[list[str], list[str], dict[str, int]]:
    """(input texts, predicted labels, line counts) of a `lmtune serve --log-predictions` file.

    Lines logged by another model version are left out (a registry's log spans releases).
    Unreadable lines (a server killed mid-write) are skipped up to max_bad_fraction.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"predictions log {p} does not exist (write one with `lmtune serve --log-predictions FILE`)"
        )
    texts, preds, bad = [], [], []
    lines = [
        (i, line)
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if line.strip()
    ]
    other = 0
    for i, line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {i}: not valid JSON ({exc.msg})")
            continue
        got = _log_texts(entry.get("input")) if isinstance(entry, dict) else []
        if not got:
            bad.append(f"line {i}: no 'input' text")
            continue
        if version is not None and entry.get("model_version") not in (None, version):
            other += 1
            continue
        lab = _log_labels(entry, set(labels or []))
        texts += got
        preds += lab if len(lab) == len(got) else []
    if len(bad) > max_bad_fraction * max(len(lines), 1):
        raise UserError(
            f"{p}: {len(bad)} of {len(lines)} lines are not logged predictions, first "
            f"{bad[0]}; expected the JSON lines `lmtune serve --log-predictions` writes "
            "(time, endpoint, model_version, input, output, label, scores, ...)"
        )
    if not texts:
        why = (
            f"all {other} lines are from other model versions than {version}"
            if other
            else "the file is empty"
        )
        raise UserError(f"{p}: no logged predictions to record ({why})")
    return (
        texts,
        preds,
        {"lines": len(lines), "skipped_bad": len(bad), "skipped_other_versions": other},
    )
