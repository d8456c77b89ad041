"""Task metrics computed from predictions (no sklearn needed for these few formulas)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> np.ndarray:
    """cm[i, j] = examples whose gold label is i and prediction is j."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(gold: Sequence[int], pred: Sequence[int], labels: list[str]) -> dict:
    """Accuracy, macro and weighted precision/recall/F1, per-class figures and the confusion matrix.

    With two labels, ``precision``/``recall``/``f1`` are those of the positive (second) label.

    A class never predicted has precision 0 (not NaN) so macro averages stay defined, as in
    sklearn's zero_division=0.
    """
    k = len(labels)
    cm = confusion_matrix(gold, pred, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    total = support.sum()
    present = support > 0
    weights = support / total if total else np.zeros(k)
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
    }
    if k == 2:
        # Binary tasks also get the positive class's figures under plain names: GLUE reports
        # MRPC and QQP as F1 of label 1 (sklearn's average="binary"). The positive class is the
        # second label in label order ("1" of 0/1, "positive" of negative/positive).
        out.update(precision=float(precision[1]), recall=float(recall[1]), f1=float(f1[1]))
    details = {
        "per_class": {
            labels[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        },
        "confusion_matrix": {"labels": labels, "matrix": cm.tolist()},
    }
    return {**out, "details": details}


def perplexity(mean_nll: float) -> float:
    """exp(mean token negative log-likelihood), capped to stay finite in JSON."""
    return float(math.exp(min(mean_nll, 50.0)))
