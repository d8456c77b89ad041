"""Drift statistics as pure functions: PSI, two-sample KS, out-of-vocabulary rate.

Distributions are passed as counts ({value: count}) rather than raw samples, because that is
what the training-data profile and the monitoring history store: a token-length histogram of
67k training rows is a few hundred numbers, the rows themselves are not kept.

- PSI (population stability index) = sum over bins of (a - e) * ln(a / e), with e and a the
  reference and current proportions per bin. Convention: < 0.1 stable, 0.1-0.2 moderate,
  > 0.2 a significant shift. Every bin gets 0.5 added to its count (Jeffreys smoothing): an
  empty bin, common in a small batch, then adds a large but finite term, where the usual
  floor at a tiny epsilon lets one empty bin of a healthy batch dominate the index.
- KS: the largest gap between the two empirical CDFs, with the p-value from the asymptotic
  Kolmogorov distribution at sqrt(n*m/(n+m)) * D (scipy's method="asymp"). Token lengths are
  integers, so ties make the p-value conservative (it errs towards "no drift").
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PSI_SMOOTHING = 0.5
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore): the unit of the OOV rate."""
    return _WORD.findall(text.lower())


def oov_rate(tokens: Iterable[str], vocab: set[str] | frozenset[str]) -> float:
    """Fraction of word tokens not in vocab (0.0 for no tokens)."""
    total = missing = 0
    for tok in tokens:
        total += 1
        missing += tok not in vocab
    return missing / total if total else 0.0


def proportions(counts: Sequence[float], smoothing: float = PSI_SMOOTHING) -> list[float]:
    """Counts as proportions after adding `smoothing` to every bin (an empty bin would make PSI infinite)."""
    if sum(counts) <= 0:
        raise ValueError("proportions of an empty distribution")
    total = float(sum(counts)) + smoothing * len(counts)
    return [(c + smoothing) / total for c in counts]


def psi(
    expected: Sequence[float], actual: Sequence[float], smoothing: float = PSI_SMOOTHING
) -> float:
    """Population stability index of two count vectors over the same bins."""
    if len(expected) != len(actual):
        raise ValueError(f"psi needs aligned bins, got {len(expected)} and {len(actual)}")
    e, a = proportions(expected, smoothing), proportions(actual, smoothing)
    return float(sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True)))


def psi_categorical(
    expected: Mapping[str, float], actual: Mapping[str, float], smoothing: float = PSI_SMOOTHING
) -> float:
    """PSI of two categorical distributions (e.g. labels); a category missing on one side counts 0."""
    keys = sorted(set(expected) | set(actual))
    return psi([expected.get(k, 0) for k in keys], [actual.get(k, 0) for k in keys], smoothing)


def quantile_edges(counts: Mapping[float, int], n_bins: int = 10) -> list[float]:
    """Right-closed bin edges at the reference's 1/n_bins quantiles (duplicates merged).

    Bins of equal reference mass are the usual PSI binning: no bin is empty on the
    reference side, and every bin weighs the same in the index.
    """
    values = sorted(counts)
    total = sum(counts[v] for v in values)
    edges: list[float] = []
    cum, q = 0, 1
    for v in values[:-1]:  # the last value's bin is open to the right anyway
        cum += counts[v]
        while q < n_bins and cum >= total * q / n_bins:
            if not edges or edges[-1] != v:
                edges.append(v)
            q += 1
    return edges


def bin_counts(counts: Mapping[float, int], edges: Sequence[float]) -> list[int]:
    """Counts per bin (-inf, e1], (e1, e2], ..., (ek, inf) for value counts."""
    out = [0] * (len(edges) + 1)
    for value, c in counts.items():
        out[bisect.bisect_left(edges, value)] += c
    return out


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n) * D_n)."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # The theta-function form converges fast for small x, where the alternating one does not.
        y = math.pi**2 / (8 * x * x)
        cdf = (
            math.sqrt(2 * math.pi) / x * sum(math.exp(-((2 * k - 1) ** 2) * y) for k in range(1, 8))
        )
        return min(max(1.0 - cdf, 0.0), 1.0)
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(max(2.0 * total, 0.0), 1.0)


def ks_2samp(a: Mapping[float, int], b: Mapping[float, int]) -> dict[str, float]:
    """Two-sample KS statistic and asymptotic p-value for two value->count maps."""
    n, m = sum(a.values()), sum(b.values())
    if n == 0 or m == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    cum_a = cum_b = 0
    d = 0.0
    for v in sorted(set(a) | set(b)):
        cum_a += a.get(v, 0)
        cum_b += b.get(v, 0)
        d = max(d, abs(cum_a / n - cum_b / m))
    en = n * m / (n + m)
    return {"statistic": d, "pvalue": kolmogorov_sf(math.sqrt(en) * d), "n": n, "m": m}


def value_counts(values: Iterable[Any]) -> dict[Any, int]:
    """{value: count} of a sample (the shape every function here takes)."""
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def int_keys(counts: Mapping[str, int]) -> dict[int, int]:
    """Counts read back from JSON (whose keys are strings) with integer keys again."""
    return {int(k): int(v) for k, v in counts.items()}


def compare(
    profile: Mapping[str, Any], stats: Mapping[str, Any], n_bins: int = 10
) -> dict[str, Any]:
    """Drift of one batch (profile.batch_stats) against the training profile (profile.data_profile).

    Returns the figures the monitor checks: length PSI and KS, OOV and unknown-token rates
    beside their training references, and label/prediction PSI against training labels.
    """
    ref_len, cur_len = int_keys(profile["length"]["counts"]), int_keys(stats["length"]["counts"])
    edges = quantile_edges(ref_len, n_bins)
    out: dict[str, Any] = {
        "length_psi": psi(bin_counts(ref_len, edges), bin_counts(cur_len, edges)),
        "length_ks": ks_2samp(ref_len, cur_len),
        "oov_rate": stats["oov_rate"],
        "oov_reference": profile["vocab"]["reference_oov_rate"],
        "unk_rate": stats["unk_rate"],
        "unk_reference": profile["unk_rate"],
    }
    out["oov_increase"] = out["oov_rate"] - out["oov_reference"]
    out["unk_increase"] = out["unk_rate"] - out["unk_reference"]
    train_labels = profile.get("labels")
    if train_labels:
        for key, name in (("label_counts", "label_psi"), ("pred_counts", "prediction_psi")):
            if stats.get(key):
                out[name] = psi_categorical(train_labels, stats[key])
    return out
