"""SQuAD metrics: exact match and F1 with the official answer normalisation (v1.1 and v2.0).

The formulas follow the official evaluation script of SQuAD 2.0 (evaluate-v2.0.py), which
agrees with v1.1 on answerable questions: lower-case, drop punctuation, drop the articles
a/an/the, collapse whitespace; F1 over the bag of normalised tokens; the score of a
prediction is its best score against any gold answer. A question without gold answers
(unanswerable, v2) has the single gold answer "": only an empty prediction scores 1 on it.
Scores are percentages (0-100), as in the official script and published results.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, articles (a, an, the) and extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(prediction: str, gold: str) -> int:
    """1 when the normalised strings are equal, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings; when either is empty, 1 only if both are."""
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """Gold texts that survive normalisation; [""] when none do (an unanswerable question)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score_one(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact, f1) of one prediction: the maximum over the gold answers, each 0 or 1 scaled."""
    golds = gold_answers(answers)
    return (
        float(max(exact_score(prediction, g) for g in golds)),
        max(f1_score(prediction, g) for g in golds),
    )


def _mean(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def squad_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """exact, f1 and total over all questions; with unanswerable questions also the
    HasAns_/NoAns_ split (exact, f1, total) of the official v2 script. Percentages."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    em, f1, has = [], [], []
    for pred, gold in zip(predictions, answers, strict=True):
        e, f = score_one(pred, gold)
        em.append(e)
        f1.append(f)
        has.append(gold_answers(gold) != [""])
    out = {"exact": _mean(em), "f1": _mean(f1), "total": float(len(em))}
    if not all(has):  # v2: report answerable and unanswerable questions apart
        for name, keep in (("HasAns", True), ("NoAns", False)):
            idx = [i for i, h in enumerate(has) if h == keep]
            out[f"{name}_exact"] = _mean([em[i] for i in idx])
            out[f"{name}_f1"] = _mean([f1[i] for i in idx])
            out[f"{name}_total"] = float(len(idx))
    return out


def best_null_threshold(
    null_margin: Sequence[float], span_f1: Sequence[float], answerable: Sequence[bool]
) -> tuple[float, float]:
    """The no-answer threshold that maximises F1, and that F1 (percent), as in the official
    v2 script's best_f1_thresh.

    null_margin[i] = null score - best span score of question i; it gets "no answer" when
    null_margin[i] > threshold. span_f1[i] is the F1 of its best span against the gold;
    an unanswerable question scores 1 for "no answer" and 0 for any span.
    """
    n = len(null_margin)
    if n == 0:
        return 0.0, 0.0
    # Threshold above every margin: nobody abstains; then lower it past one margin at a time.
    score = sum(f if a else 0.0 for f, a in zip(span_f1, answerable, strict=True))
    best, best_thr = score, max(null_margin)
    order = sorted(range(n), key=lambda j: -null_margin[j])
    for k, i in enumerate(order):
        score += (0.0 if answerable[i] else 1.0) - (span_f1[i] if answerable[i] else 0.0)
        tied_next = k + 1 < n and null_margin[order[k + 1]] == null_margin[i]
        if score > best and not tied_next:  # a threshold cannot split tied margins
            # Halfway to the next margin: abstains on exactly the questions seen so far.
            below = null_margin[order[k + 1]] if k + 1 < n else null_margin[i] - 2.0
            best, best_thr = score, (null_margin[i] + below) / 2
    return best_thr, 100.0 * best / n
