"""Duplicates: exact dedupe, MinHash near-dedupe with LSH banding, train/eval/test leakage.

Near-duplicates use MinHash over word shingles: the fraction of equal signature slots
estimates the Jaccard similarity of the two shingle sets. LSH banding (b bands of r slots;
rows sharing any band become candidates) keeps the work near-linear instead of comparing
all pairs; each candidate pair is then verified by its MinHash estimate against the
threshold, so banding only decides what gets compared, never what gets dropped.
Hashing uses blake2b and splitmix64 (never Python's salted hash()), so results do not depend
on PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")
_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xBF58476D1CE4E5B9)
_C3 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping multiplies are intended)."""
    with np.errstate(over="ignore"):
        x = x + _C1
        x = (x ^ (x >> np.uint64(30))) * _C2
        x = (x ^ (x >> np.uint64(27))) * _C3
        return x ^ (x >> np.uint64(31))


@dataclass
class Duplicate:
    """Row `index` duplicates the earlier/other row `of` with this (estimated) similarity."""

    index: int
    of: int
    similarity: float


def exact_groups(keys: list[str]) -> dict[str, list[int]]:
    """Indices grouped by key, in first-seen order (only groups with more than one row)."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: v for k, v in groups.items() if len(v) > 1}


def exact_dedupe(
    keys: list[str], labels: list[str] | None = None
) -> tuple[list[Duplicate], list[list[int]]]:
    """Exact duplicates to drop (keep the first) and, for labelled rows, conflicting groups.

    A text that appears with different labels cannot be learned either way, and keeping one
    copy would pick a label arbitrarily, so every row of such a group is returned as a
    conflict instead.
    """
    dups: list[Duplicate] = []
    conflicts: list[list[int]] = []
    for idx in exact_groups(keys).values():
        if labels is not None and len({labels[i] for i in idx}) > 1:
            conflicts.append(idx)
            continue
        dups.extend(Duplicate(i, idx[0], 1.0) for i in idx[1:])
    return sorted(dups, key=lambda d: d.index), conflicts


class MinHasher:
    """MinHash signatures over word shingles (seeded, deterministic across processes)."""

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 0) -> None:
        """num_perm signature slots; shingle words per shingle; seed for the hash family."""
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(0, 2**63 - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
        self.shingle = shingle
        self._word_cache: dict[str, int] = {}

    def _word_hash(self, w: str) -> int:
        h = self._word_cache.get(w)
        if h is None:
            h = int.from_bytes(
                hashlib.blake2b(w.encode("utf-8", "replace"), digest_size=8).digest(), "little"
            )
            if len(self._word_cache) < 1_000_000:  # bound memory on huge vocabularies
                self._word_cache[w] = h
        return h

    def _words(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower()) or [text]
        hashes = [self._word_hash(x) for x in words]
        # A text shorter than one shingle becomes one shingle: pad with a fixed filler hash.
        return hashes + [0] * (self.shingle - len(hashes))

    def signatures(self, texts: list[str], chunk: int = 200_000) -> np.ndarray:
        """(len(texts), num_perm) MinHash signatures, computed in batches of shingles.

        Rows are processed together (one numpy call per shingle position and chunk) because
        per-row numpy calls cost more than the hashing itself on short texts.
        """
        k = self.shingle
        out = np.empty((len(texts), len(self.seeds)), dtype=np.uint64)
        i = 0
        while i < len(texts):
            words: list[int] = []
            starts: list[int] = []  # index in `words` of each shingle's first word
            counts: list[int] = []  # shingles per row
            j = i
            while j < len(texts) and (j == i or len(starts) < chunk):
                w = self._words(texts[j])
                n = len(w) - k + 1
                starts.extend(range(len(words), len(words) + n))
                counts.append(n)
                words.extend(w)
                j += 1
            w_arr = np.array(words, dtype=np.uint64)
            s_arr = np.array(starts, dtype=np.int64)
            h = np.zeros(len(s_arr), dtype=np.uint64)
            for pos in range(k):  # order-sensitive mix of the k words of each shingle
                h = _splitmix(h ^ w_arr[s_arr + pos])
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
            mins = np.minimum.reduceat(_splitmix(h[None, :] ^ self.seeds[:, None]), offsets, axis=1)
            out[i:j] = mins.T
            i = j
        return out

    def signature(self, text: str) -> np.ndarray:
        """The num_perm-slot MinHash signature of one text."""
        return self.signatures([text])[0]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising weighted false positive + false negative mass.

    False negatives weigh more: a missed pair is never seen again, while a false candidate
    only costs one verification.
    """
    s = np.linspace(0.0, 1.0, 201)
    best, best_cost = (1, num_perm), float("inf")
    for r in range(1, num_perm + 1):
        b = num_perm // r
        p = 1.0 - (1.0 - s**r) ** b  # probability that a pair of similarity s is a candidate
        below, above = s < threshold, s >= threshold
        fp = np.trapezoid(p[below], s[below]) if below.sum() > 1 else 0.0
        fn = np.trapezoid(1.0 - p[above], s[above]) if above.sum() > 1 else 0.0
        cost = 0.1 * fp + 0.9 * fn
        if cost < best_cost:
            best, best_cost = (b, r), cost
    return best


class LSHIndex:
    """Banded LSH over MinHash signatures; candidates are verified by estimated Jaccard."""

    def __init__(self, num_perm: int, threshold: float) -> None:
        """Index for signatures of num_perm slots, matching at estimated Jaccard >= threshold."""
        self.threshold = threshold
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.sigs: dict[int, np.ndarray] = {}

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        r = self.rows
        return [sig[b * r : (b + 1) * r].tobytes() for b in range(self.bands)]

    def add(self, key: int, sig: np.ndarray) -> None:
        """Insert a signature under an integer key."""
        self.sigs[key] = sig
        for bucket, k in zip(self.buckets, self._keys(sig), strict=True):
            bucket.setdefault(k, []).append(key)

    def best_match(self, sig: np.ndarray) -> tuple[int, float] | None:
        """The most similar indexed key at or above the threshold (lowest key on ties)."""
        cands: dict[int, None] = {}
        for bucket, k in zip(self.buckets, self._keys(sig), strict=True):
            cands.update(dict.fromkeys(bucket.get(k, ())))
        if not cands:
            return None
        keys = sorted(cands)
        sims = (np.stack([self.sigs[c] for c in keys]) == sig[None, :]).mean(axis=1)
        i = int(np.argmax(sims))  # argmax returns the first (lowest key) among equals
        return (keys[i], float(sims[i])) if sims[i] >= self.threshold else None


def near_dedupe(
    texts: list[str], threshold: float, shingle: int, num_perm: int, seed: int
) -> list[Duplicate]:
    """Near-duplicates to drop: each row matched against the earlier rows that were kept."""
    sigs = MinHasher(num_perm, shingle, seed).signatures(texts)
    index = LSHIndex(num_perm, threshold)
    dups: list[Duplicate] = []
    for i, sig in enumerate(sigs):
        match = index.best_match(sig)
        if match is not None:
            dups.append(Duplicate(i, match[0], round(match[1], 3)))
        else:
            index.add(i, sig)  # only kept rows are indexed, so chains do not cascade
    return dups


@dataclass
class Leak:
    """Train row `index` overlaps row `other` of split `split` (exact or near)."""

    index: int
    split: str
    other: int
    kind: str  # "exact" | "near"
    similarity: float


class LeakFinder:
    """Eval/test rows indexed once (exact content keys; MinHash LSH when `near`), train rows
    matched against them batch by batch, so a train split on disk is never held whole.

    Rows are (content key, text): the key decides exact overlap, the text is shingled.
    near=False checks exact overlap only: no MinHash, which on large train splits costs more
    time and memory than the rest of the check.
    """

    def __init__(
        self,
        others: dict[str, list[tuple[str, str]]],
        threshold: float,
        shingle: int,
        num_perm: int,
        seed: int,
        near: bool = True,
    ) -> None:
        self.exact: dict[str, tuple[str, int]] = {}
        self.hasher = MinHasher(num_perm, shingle, seed) if near else None
        self.index = LSHIndex(num_perm, threshold)
        self.where: list[tuple[str, int]] = []
        for split, rows in others.items():
            sigs = self.hasher.signatures([t for _, t in rows]) if self.hasher else None
            for j, (key, _) in enumerate(rows):
                self.exact.setdefault(key, (split, j))
                if sigs is not None:
                    self.index.add(len(self.where), sigs[j])
                self.where.append((split, j))

    def match(self, train: list[tuple[str, str]], start: int = 0) -> list[Leak]:
        """One Leak per train row that overlaps; rows are numbered from `start`."""
        if not self.where:
            return []
        sigs = self.hasher.signatures([t for _, t in train]) if self.hasher else None
        leaks: list[Leak] = []
        for k, (key, _) in enumerate(train):
            if key in self.exact:
                leaks.append(Leak(start + k, *self.exact[key], "exact", 1.0))
            elif sigs is not None and (m := self.index.best_match(sigs[k])) is not None:
                leaks.append(Leak(start + k, *self.where[m[0]], "near", round(m[1], 3)))
        return leaks


def summarize_leaks(
    leaks: list[Leak],
    sources: dict[str, list[Any]],
    train_sources: list[Any],
    splits: list[str],
    removed: bool,
) -> dict[str, Any]:
    """Report section: counts per split and kind, and up to 5 examples with sources."""
    counts = {s: {"exact": 0, "near": 0} for s in splits}
    for lk in leaks:
        counts.setdefault(lk.split, {"exact": 0, "near": 0})[lk.kind] += 1
    examples = [
        {
            "train": train_sources[lk.index],
            "split": lk.split,
            "other": sources[lk.split][lk.other],
            "kind": lk.kind,
            "similarity": lk.similarity,
        }
        for lk in leaks[:5]
    ]
    return {
        "checked": True,
        "train_rows_leaking": len(leaks),
        "by_split": counts,
        "removed_from_train": len(leaks) if removed else 0,
        "examples": examples,
    }
