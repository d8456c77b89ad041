"""prepare's stages over batches of rows, so memory grows with the dedupe index, not the rows.

Each input file is read in batches (stream.iter_records); every batch is validated, cleaned,
length-checked and cut where over-long, and its survivors are appended to the split's spill
file on disk with a 16-byte hash of their content in the exact-dedupe index. Duplicates,
near duplicates, the split and the leakage check then work on row indices and on passes over
the spill, holding only eval/test rows (small: eval is capped) and what was dropped.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.data import dedupe as dd
from lmtune.data.clean import RowCleaner, content_key, main_text
from lmtune.data.formats import LABELLED
from lmtune.data.io import Reject
from lmtune.data.stages import (
    bad_fraction_message,
    clean_rows,
    near_leakage,
    reject_row,
    truncation_limit,
    validate_records,
)
from lmtune.data.stream import BATCH, Spill, batches, iter_rows
from lmtune.data.truncate import announce_truncated


class RowsView(Sequence):
    """Rows of a spill file at the given indices, decoded on access (a list's interface)."""

    def __init__(self, ds: Any, indices: list[int]) -> None:
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [row for _, row in iter_rows(self.ds, self.indices[i])]
        return next(iter_rows(self.ds, [self.indices[i]]))[1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, row in iter_rows(self.ds, self.indices):
            yield row

    def select(self, positions: Sequence[int]) -> RowsView:
        """The rows at these positions of this view."""
        return RowsView(self.ds, [self.indices[p] for p in positions])


@dataclass
class Pool:
    """One split's input rows after cleaning: the spill and its per-row facts."""

    spill: Spill
    labels: list[str] = field(default_factory=list)  # per spill row (labelled formats)
    keys: list[bytes] = field(default_factory=list)  # content hashes (exact dedupe)
    cut: int = 0  # rows cut by truncation
    ds: Any = None
    keep: list[int] = field(default_factory=list)  # spill rows that survive dedupe

    def view(self) -> RowsView:
        """The surviving rows."""
        return RowsView(self.ds, self.keep)


def _key_hash(row: dict[str, Any], fmt: str) -> bytes:
    # 16 bytes per row instead of the row's whole text: a collision is astronomically unlikely.
    text = content_key(row, fmt).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


def _clean_batch(
    batch: list[Any], schema: Any, cfg: Config, fmt: str
) -> tuple[list[Reject], list[Reject], list[dict[str, Any]], int, tuple[Any, ...]]:
    """One batch on its own (in a worker process or not): (validation rejects, later
    rejects, kept rows, rows cut, what the cleaner counted)."""
    cleaner = RowCleaner(cfg.data.clean)
    rows, bad = validate_records(batch, schema, cfg.data.labels)
    later: list[Reject] = []
    kept, cut = clean_rows(rows, fmt, cfg, cleaner, later)
    return bad, later, kept, cut, cleaner.tally()


def _ordered_map(fn: Any, items: Iterator[tuple], workers: int) -> Iterator[Any]:
    """fn(*item) for each item, in order; with workers > 1 in that many forked processes,
    at most two batches each in flight so the reader never runs ahead of the cleaning."""
    if workers <= 1:
        yield from (fn(*item) for item in items)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.apply_async(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def read_file_into(
    pool: Pool,
    path: str,
    records: Any,
    schema: Any,
    cfg: Config,
    fmt: str,
    cleaner: RowCleaner,
    rejects: list[Reject],
) -> tuple[int, list[Reject]]:
    """Validate, clean and spill one file's records batch by batch (cleaning, the costly
    part, in data.num_proc processes once there is more than one batch).

    Returns (rows read, that file's validation rejects); the rejects also go to `rejects`.
    """
    n_read = 0
    bad_all: list[Reject] = []
    dedupe = cfg.data.clean.dedupe
    head = list(islice(records, BATCH + 1))
    workers = cfg.data.num_proc if len(head) > BATCH else 1
    jobs = ((batch, schema, cfg, fmt) for batch in batches(chain(head, records)))
    del head
    for bad, later, kept, cut, counted in _ordered_map(_clean_batch, jobs, workers):
        n_read += len(bad) + len(later) + len(kept)
        rejects += bad
        rejects += later
        bad_all += bad
        cleaner.merge(counted)
        pool.cut += cut
        if fmt in LABELLED:
            pool.labels += [r["label"] for r in kept]
        if dedupe:
            pool.keys += [_key_hash(r, fmt) for r in kept]
        pool.spill.add(kept)
    return n_read, bad_all


def check_file(path: str, n_read: int, bad: list[Reject], cfg: Config, out_dir: Path) -> str | None:
    """data.max_bad_fraction for one file (the message, or None)."""
    return bad_fraction_message(
        path, n_read, bad, cfg.data.max_bad_fraction, out_dir / "rejects.jsonl"
    )


def finish_pool(pool: Pool, cfg: Config, fmt: str, rejects: list[Reject]) -> None:
    """Close the spill, announce truncation, then exact and near dedupe (in that order)."""
    pool.ds = pool.spill.close()
    limit = truncation_limit(cfg)
    if limit is not None:
        announce_truncated(pool.cut, limit, cfg.model.max_length)
    pool.keep = list(range(pool.spill.n))
    if cfg.data.clean.dedupe:
        drop = _exact(pool, fmt, rejects)
        pool.keep = [i for i in pool.keep if i not in drop]
    pool.keys = []  # the index is not needed any more
    nd = cfg.data.clean.near_dedupe
    if nd.enabled and pool.keep:
        drop = _near(pool, cfg, fmt, rejects)
        pool.keep = [i for i in pool.keep if i not in drop]


def _exact(pool: Pool, fmt: str, rejects: list[Reject]) -> set[int]:
    """Exact duplicates (keep the first) and conflicting labels (drop all), as
    dedupe.exact_dedupe decides them, from the content hashes."""
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(pool.keys):
        f = first.setdefault(key, i)
        if f != i:
            groups.setdefault(f, [f]).append(i)
    del first
    labels = pool.labels if fmt in LABELLED else None
    dups: list[tuple[int, int]] = []
    conflicts: list[list[int]] = []
    for f in sorted(groups):
        idx = groups[f]
        if labels is not None and len({labels[i] for i in idx}) > 1:
            conflicts.append(idx)
        else:
            dups += [(i, f) for i in idx[1:]]
    if not dups and not conflicts:
        return set()
    dups.sort()
    wanted = sorted({i for d in dups for i in d} | {i for g in conflicts for i in g})
    rows = dict(iter_rows(pool.ds, wanted))
    drop: set[int] = set()
    for i, of in dups:
        drop.add(i)
        reason = f"exact duplicate of {rows[of]['_source']}"
        rejects.append(reject_row(rows[i], reason, "dedupe", "exact duplicate"))
    for group in conflicts:
        seen = ", ".join(f"'{rows[i]['label']}' ({rows[i]['_source']})" for i in group[:6])
        for i in group:
            drop.add(i)
            reason = f"conflicting labels: the same text has labels {seen}"
            rejects.append(reject_row(rows[i], reason, "dedupe", "conflicting labels"))
    return drop


def _near(pool: Pool, cfg: Config, fmt: str, rejects: list[Reject]) -> set[int]:
    """Near duplicates against the earlier kept rows (dedupe.near_dedupe, batch by batch)."""
    nd = cfg.data.clean.near_dedupe
    hasher = dd.MinHasher(nd.num_perm, nd.shingle, cfg.run.seed)
    index = dd.LSHIndex(nd.num_perm, nd.threshold)
    sources: dict[int, str] = {}
    drop: set[int] = set()
    pos = 0
    for chunk in batches(iter_rows(pool.ds, pool.keep)):
        sigs = hasher.signatures([main_text(r, fmt) for _, r in chunk])
        for (i, row), sig in zip(chunk, sigs, strict=True):
            match = index.best_match(sig)
            if match is not None:
                reason = (
                    f"near duplicate of {sources[match[0]]} "
                    f"(estimated Jaccard {round(match[1], 3)})"
                )
                rejects.append(reject_row(row, reason, "near_dedupe", "near duplicate"))
                drop.add(i)
            else:
                index.add(pos, sig)  # only kept rows are indexed, so chains do not cascade
                sources[pos] = row["_source"]
            pos += 1
    return drop


def check_leakage(
    cfg: Config, fmt: str, splits: dict[str, Any], rejects: list[Reject]
) -> dict[str, Any]:
    """Report train rows overlapping eval/test (exact, and near when data.leakage.near says
    so); drop them from train if configured. Train is passed over in batches (eval/test are
    lists)."""
    lc, nd = cfg.data.leakage, cfg.data.clean.near_dedupe
    others = {s: splits[s] for s in ("eval", "test") if splits.get(s)}
    if not lc.check or not others:
        return {"checked": False}
    train = splits["train"]
    near = near_leakage(cfg, len(train))

    def keyed(rows: Any) -> list[tuple[str, str]]:
        return [(content_key(r, fmt), main_text(r, fmt) if near else "") for r in rows]

    finder = dd.LeakFinder(
        {s: keyed(rows) for s, rows in others.items()},
        lc.threshold,
        nd.shingle,
        nd.num_perm,
        cfg.run.seed,
        near,
    )
    leaks: list[dd.Leak] = []
    leaking: dict[int, dict[str, Any]] = {}
    for chunk in batches(enumerate(train)):
        start = chunk[0][0]
        found = finder.match(keyed(r for _, r in chunk), start)
        leaks += found
        leaking.update((lk.index, chunk[lk.index - start][1]) for lk in found)
    sources = {s: [r["_source"] for r in rows] for s, rows in others.items()}
    train_sources = {i: r["_source"] for i, r in leaking.items()}
    section = dd.summarize_leaks(leaks, sources, train_sources, list(others), lc.remove_from_train)  # type: ignore[arg-type]
    section["threshold"] = lc.threshold
    section["near"] = near
    if lc.remove_from_train and leaks:
        for lk in leaks:
            other = others[lk.split][lk.other]["_source"]
            reason = (
                f"also in {lk.split} ({lk.kind} overlap with {other}, similarity {lk.similarity})"
            )
            rejects.append(
                reject_row(
                    leaking[lk.index], reason, "leakage", f"{lk.kind} overlap with {lk.split}"
                )
            )
        drop = {lk.index for lk in leaks}
        keep = [i for i in range(len(train)) if i not in drop]
        splits["train"] = (
            train.select(keep) if isinstance(train, RowsView) else [train[i] for i in keep]
        )
    return section
