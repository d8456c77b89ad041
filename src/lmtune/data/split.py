"""Seeded train/eval/test splitting (stratified by label), balancing and class weights.

Everything is driven by numpy's Generator seeded with the run seed and iterates in a fixed
order (labels sorted, rows in input order), so the same seed gives the same split on every
machine and under any PYTHONHASHSEED. Rows keep their input order inside each split.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from lmtune.data.formats import natural_labels


def split_size(n: int, frac: float) -> int:
    """Rows for a split of fraction frac: rounded half up, at least 1 when frac > 0 and n > 1."""
    if frac <= 0 or n < 2:
        return 0
    return max(1, math.floor(n * frac + 0.5))


def _apportion(sizes: list[int], caps: list[int], frac: float, target: int) -> list[int]:
    """Split `target` across groups in proportion to sizes (largest remainder), within caps."""
    quotas = [s * frac for s in sizes]
    alloc = [min(math.floor(q), c) for q, c in zip(quotas, caps, strict=True)]
    rest = target - sum(alloc)
    # Largest fractional part first; ties go to the larger group, then to the earlier label.
    order = sorted(
        range(len(sizes)), key=lambda g: (-(quotas[g] - math.floor(quotas[g])), -sizes[g], g)
    )
    while rest > 0:
        progressed = False
        for g in order:
            if rest > 0 and alloc[g] < caps[g]:
                alloc[g] += 1
                rest -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def split_indices(
    n: int, eval_frac: float, test_frac: float, seed: int, labels: list[str] | None = None
) -> dict[str, list[int]]:
    """Indices of rows for train/eval/test; stratified per label when labels are given.

    Stratified: each label gets its proportional share of eval and test, and keeps at least
    one row in train (a label seen once stays in train: the model cannot learn it otherwise,
    and a single eval example of it says nothing).
    """
    rng = np.random.default_rng(seed)
    n_eval = split_size(n, eval_frac)
    n_test = split_size(n, test_frac)
    if n_eval + n_test >= n:  # always leave train at least one row
        n_test = max(0, min(n_test, n - 1 - n_eval))
        n_eval = max(0, min(n_eval, n - 1))
    if labels is None:
        perm = rng.permutation(n)
        ev, te = perm[:n_eval], perm[n_eval : n_eval + n_test]
        tr = perm[n_eval + n_test :]
        return {
            "train": sorted(tr.tolist()),
            "eval": sorted(ev.tolist()),
            "test": sorted(te.tolist()),
        }
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    names = natural_labels(groups)
    sizes = [len(groups[g]) for g in names]
    caps = [s - 1 for s in sizes]
    ev_alloc = _apportion(sizes, caps, eval_frac, n_eval)
    te_alloc = _apportion(
        sizes, [c - e for c, e in zip(caps, ev_alloc, strict=True)], test_frac, n_test
    )
    out: dict[str, list[int]] = {"train": [], "eval": [], "test": []}
    for g, e, t in zip(names, ev_alloc, te_alloc, strict=True):
        idx = np.array(groups[g])[rng.permutation(len(groups[g]))].tolist()
        out["eval"] += idx[:e]
        out["test"] += idx[e : e + t]
        out["train"] += idx[e + t :]
    return {k: sorted(v) for k, v in out.items()}


def group_split_indices(
    groups: list[str], eval_frac: float, test_frac: float, seed: int
) -> dict[str, list[int]]:
    """Indices for train/eval/test where all rows of a group land in the same split.

    Groups (e.g. article titles) are visited in a seeded order; eval, then test, take a group
    when it brings them closer to their share of rows; the rest is train. A split that wanted
    rows but found only groups that are too big takes the smallest one, and train always
    keeps at least one group. Shares are met as closely as whole groups allow.
    """
    names = list(dict.fromkeys(groups))  # first-seen order: independent of PYTHONHASHSEED
    members: dict[str, list[int]] = {g: [] for g in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    targets = {
        "eval": split_size(len(groups), eval_frac),
        "test": split_size(len(groups), test_frac),
    }
    place: dict[str, list[str]] = {"train": [], "eval": [], "test": []}
    count = {"eval": 0, "test": 0}
    for gi in np.random.default_rng(seed).permutation(len(names)).tolist():
        g, size = names[gi], len(members[names[gi]])
        dest = "train"
        for s in ("eval", "test"):
            need = targets[s] - count[s]
            if need > 0 and size < 2 * need:  # |count + size - target| < |count - target|
                dest = s
                count[s] += size
                break
        place[dest].append(g)
    for s in ("eval", "test"):
        if targets[s] > 0 and not place[s] and len(place["train"]) > 1:
            smallest = min(place["train"], key=lambda g: len(members[g]))
            place["train"].remove(smallest)
            place[s].append(smallest)
    if not place["train"]:  # never leave train without rows
        donor = max(("eval", "test"), key=lambda s: len(place[s]))
        smallest = min(place[donor], key=lambda g: len(members[g]))
        place[donor].remove(smallest)
        place["train"].append(smallest)
    return {s: sorted(i for g in gs for i in members[g]) for s, gs in place.items()}


def balance(
    rows: list[dict[str, Any]], key: str, strategy: str, seed: int
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]], dict[str, Any]]:
    """Balance rows by row[key] with undersample/oversample.

    Returns (rows, dropped with reasons, report section). Undersampling keeps a seeded sample
    of each group down to the smallest group; oversampling adds seeded copies (with
    replacement) up to the largest group. Row order is kept; added copies follow the originals.
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r[key], []).append(i)
    names = natural_labels(groups)
    before = {g: len(groups[g]) for g in names}
    rng = np.random.default_rng(seed)
    dropped: list[tuple[dict[str, Any], str]] = []
    out = rows
    added = 0
    if strategy == "undersample" and groups:
        target = min(before.values())
        keep: set[int] = set()
        for g in names:
            idx = groups[g]
            chosen = (
                rng.choice(len(idx), size=target, replace=False)
                if len(idx) > target
                else np.arange(len(idx))
            )
            keep.update(idx[j] for j in chosen.tolist())
            if len(idx) > target:
                reason = f"undersampled ('{g}': {len(idx)} -> {target})"
                dropped += [(rows[i], reason) for i in idx if i not in keep]
        out = [r for i, r in enumerate(rows) if i in keep]
    elif strategy == "oversample" and groups:
        target = max(before.values())
        extra: list[dict[str, Any]] = []
        for g in names:
            idx = groups[g]
            if len(idx) < target:
                picks = rng.choice(np.array(idx), size=target - len(idx), replace=True)
                extra += [dict(rows[i]) for i in picks.tolist()]
        added = len(extra)
        out = rows + extra
    after = dict(Counter(r[key] for r in out))
    section = {
        "strategy": strategy,
        "before": before,
        "after": {g: after.get(g, 0) for g in names},
        "rows_added": added,
        "rows_removed": len(dropped),
    }
    return out, dropped, section


def class_weights(labels_in_train: list[str], labels: list[str]) -> list[float]:
    """Per-class loss weights N / (K * n_c), indexed like `labels`.

    K counts the classes present in train; a class absent from train gets weight 1.0 (its
    loss never occurs in training, and eval losses stay comparable).
    """
    counts = Counter(labels_in_train)
    n = len(labels_in_train)
    k = sum(1 for lab in labels if counts.get(lab, 0) > 0)
    return [round(n / (k * counts[lab]), 6) if counts.get(lab, 0) > 0 else 1.0 for lab in labels]
