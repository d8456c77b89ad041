"""Calibration: does a classifier's confidence match how often it is right?

The reliability table bins examples by the probability of the predicted class (equal-width
bins over [0, 1]); the expected calibration error (ECE, Guo et al. 2017) is the
example-weighted mean gap between each bin's accuracy and its mean confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> list[dict[str, Any]]:
    """Per bin: its edges, example count, mean confidence and accuracy (None when empty).

    Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to the first
    bin, so every example lands in exactly one bin.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences for {ok.size} correctness flags")
    # ceil(conf * n) - 1 puts b/n into bin b-1 (right-closed bins); clip handles 0 and 1.
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = idx == b
        n = int(mask.sum())
        bins.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": n,
                "confidence": float(conf[mask].mean()) if n else None,
                "accuracy": float(ok[mask].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> float:
    """ECE = sum over bins of (bin count / total) * |bin accuracy - bin mean confidence|."""
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    )
