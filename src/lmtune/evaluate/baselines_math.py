"""The pure parts of the zero-/few-shot baselines (evaluate/baselines.py): embedding
geometry for encoders, label scores for causal LMs, seeded demonstrations and metric rows.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import torch

from lmtune.evaluate.metrics import classification_metrics

Rows = list[dict[str, Any]]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors [B, T, H] over positions where mask [B, T] is 1 (padding excluded)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, so dot products are cosine similarities."""
    return torch.nn.functional.normalize(x.float(), p=2, dim=-1)


def class_prototypes(emb: torch.Tensor, classes: list[int], num_classes: int) -> torch.Tensor:
    """Unit-length mean of each class's embeddings [C, H]; a class without rows gets NaN.

    Renormalising matters: argmax of cosine similarity compares prototypes of different
    lengths otherwise (a tight class would have a longer mean and win more often).
    """
    protos = torch.full((num_classes, emb.shape[1]), float("nan"))
    idx = torch.tensor(classes, dtype=torch.long)
    for c in range(num_classes):
        members = emb[idx == c]
        if len(members):
            protos[c] = l2_normalize(l2_normalize(members).mean(0))
    return protos


def nearest_prototype(emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar prototype per row; NaN prototypes never win."""
    sims = l2_normalize(emb) @ protos.T.nan_to_num(0.0)
    sims[:, protos.isnan().any(-1)] = float("-inf")
    return sims.argmax(-1)


def label_scores(sums: torch.Tensor, counts: torch.Tensor, scoring: str) -> torch.Tensor:
    """Per-candidate score from summed log-probabilities and token counts: 'sum' or 'mean'."""
    if scoring == "sum":
        return sums
    if scoring == "mean":
        return sums / counts.clamp_min(1)
    raise ValueError(f"unknown scoring {scoring!r} (use mean or sum)")


def sample_shots(rows: Rows, labels: list[str], k: int, seed: int) -> tuple[Rows, dict[str, int]]:
    """k rows per label drawn with random.Random(seed), in shuffled order, and the labels
    that had fewer than k rows ({label: rows available})."""
    rng = random.Random(seed)
    picked: Rows = []
    short: dict[str, int] = {}
    for label in labels:
        pool = [r for r in rows if r.get("label") == label]
        if len(pool) < k:
            short[label] = len(pool)
        picked += rng.sample(pool, min(k, len(pool)))
    rng.shuffle(picked)  # demonstrations interleave classes instead of arriving in blocks
    return picked, short


def metric_row(
    method: str, k: int, gold: list[int], preds: list[list[int]], labels: list[str]
) -> dict[str, Any]:
    """One baselines.json row: accuracy and macro F1 (mean and sample std over seeds when several)."""
    runs = [classification_metrics(gold, p, labels) for p in preds]
    acc = [r["accuracy"] for r in runs]
    f1 = [r["macro_f1"] for r in runs]
    row: dict[str, Any] = {
        "method": method,
        "k": k,
        "accuracy": statistics.fmean(acc),
        "macro_f1": statistics.fmean(f1),
        "seeds": len(preds),
    }
    if method == "few-shot":
        row.update(
            accuracy_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
            macro_f1_std=statistics.stdev(f1) if len(f1) > 1 else 0.0,
            accuracy_per_seed=acc,
        )
    return row


def draw_shots(
    train_rows: Rows, labels: list[str], k: int, seed: int, notes: list[str] | None
) -> Rows:
    """k seeded demonstrations per label; a label with fewer rows gets a note (when notes is given)."""
    shots, short = sample_shots(train_rows, labels, k, seed)
    if short and notes is not None:
        notes.append(
            f"few-shot: fewer than {k} training rows for label(s) "
            + ", ".join(f"{lab} ({n})" for lab, n in short.items())
            + "; all of them were used"
        )
    return shots
