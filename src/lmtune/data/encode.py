"""task.encode over a whole split, batched through datasets.map into Arrow files.

Rows go in as one JSON string per row (write_rows), features come out as Arrow columns that
FeatureSet reads lazily. Worker processes (data.num_proc) each append the rows their task
refused (ValueError from encode: no room for a response within max_length, ...) to their own
rejects file; the shards are contiguous, so reading the files in shard order gives the
rejects in row order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from lmtune.data.features import EXTRA, FeatureSet, write_rows
from lmtune.data.stream import texts_from

BATCH = 1000  # rows per map() call: big enough to amortise Arrow conversion, small in memory


def _reject(row: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """A rejects.jsonl entry for a row task.encode refused (same shape as before batching)."""
    return {
        "source": row.get("_source"),
        "reason": str(exc),
        "stage": "tokenize",
        "row": {k: v for k, v in row.items() if not k.startswith("_")},
    }


def _kind(v: Any) -> str | None:
    """The typed column kind a value fits (None: it travels in the JSON column)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int64"
    if isinstance(v, float):
        return "float64"
    # Ends and middle only: a check of every element was a fifth of the encoding time, and
    # id lists come whole from the tokenizer (a list of mixed types fails Arrow's conversion).
    if isinstance(v, list) and v and all(type(v[i]) is int for i in (0, len(v) // 2, -1)):
        return "ids"
    return None


class _EncodeBatch:
    """The map() function: a class, so worker processes get the task by pickling once.

    map() runs over row positions only; each call reads its rows from the rows file with
    plain reads, on from where the previous batch of its shard ended. Reading them through
    the memory map instead left every page a worker had read resident in that worker: a
    million rows cost each worker half the file.
    """

    def __init__(self, task: Any, kinds: dict[str, str], rejects_dir: Path, rows: Path) -> None:
        self.task, self.kinds, self.rejects_dir, self.rows_file = task, kinds, rejects_dir, rows
        self._next = -1  # the position the open reader is at (none open yet)
        self._texts: Iterator[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_next": -1, "_texts": None}  # an open file does not pickle

    def _rows(self, positions: list[int]) -> list[dict[str, Any]]:
        """The rows at `positions` (consecutive: map() batches a contiguous shard in order)."""
        if not positions:
            return []
        if self._texts is None or positions[0] != self._next:
            self._texts = texts_from(self.rows_file, positions[0])
        self._next = positions[0] + len(positions)
        return [json.loads(text) for text in islice(self._texts, len(positions))]

    def __call__(self, batch: dict[str, list[Any]], rank: int | None) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in [*self.kinds, EXTRA]}
        rejected = []
        rows = self._rows(batch["i"])
        for row, feat in zip(rows, self.task.encode_batch(rows), strict=True):
            if isinstance(feat, ValueError):
                rejected.append(_reject(row, feat))
                continue
            for f in feat if isinstance(feat, list) else [feat]:  # qa: one per window
                self._add(out, f)
        if rejected:
            path = self.rejects_dir / f"rejects-{rank or 0:05d}.jsonl"
            with path.open("a", encoding="utf-8") as fh:
                for r in rejected:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        return out

    def _add(self, out: dict[str, list[Any]], feat: dict[str, Any]) -> None:
        rest = {}
        for k, v in feat.items():
            kind = self.kinds.get(k)
            if kind is not None and (_kind(v) == kind or (kind == "ids" and v == [])):
                continue
            rest[k] = v  # a key or a type the typed columns do not hold: kept exactly
        for k in self.kinds:
            out[k].append(None if k in rest or k not in feat else feat[k])
        out[EXTRA].append(json.dumps(rest) if rest else None)


def _schema(sample: dict[str, Any]) -> tuple[dict[str, str], Any]:
    """Typed columns from one encoded feature: token ids as int32 (int64 would double the
    cache for no use); values of other types go to the JSON column."""
    import datasets

    types = {
        "bool": datasets.Value("bool"),
        "int64": datasets.Value("int64"),
        "float64": datasets.Value("float64"),
        # datasets >= 4 names it List; 3.x only has Sequence.
        "ids": getattr(datasets, "List", datasets.Sequence)(datasets.Value("int32")),
    }
    kinds = {k: kind for k, v in sample.items() if (kind := _kind(v)) is not None}
    cols = {k: types[kind] for k, kind in kinds.items()}
    cols[EXTRA] = datasets.Value("large_string")
    return kinds, datasets.Features(cols)


def _first_feature(task: Any, rows: Any) -> dict[str, Any] | None:
    for row in rows:
        try:
            feat = task.encode(row)
        except ValueError:
            continue
        feat = feat[0] if isinstance(feat, list) and feat else feat
        if isinstance(feat, dict):
            return feat
    return None


def encode_split(
    task: Any, rows: Any, folder: Path, num_proc: int = 1
) -> tuple[FeatureSet, list[dict[str, Any]]]:
    """Encode rows into folder/features*.arrow; returns the features and the rejects.

    folder also receives rows.arrow (the rows as JSON, what a cache hit reads back) and the
    workers' rejects files. Rows that encode to nothing are rejects, never silently lost.
    """
    import datasets
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "rows.arrow", rows)
    positions = datasets.Dataset.from_dict({"i": np.arange(len(rows))})
    sample = _first_feature(task, rows[:BATCH] if len(rows) > BATCH else rows)
    kinds, schema = _schema(sample or {"length": 0})
    rejects_dir = folder / "rejects"
    rejects_dir.mkdir(exist_ok=True)
    ds = positions.map(
        _EncodeBatch(task, kinds, rejects_dir, folder / "rows.arrow"),
        batched=True,
        batch_size=BATCH,
        with_rank=True,
        num_proc=num_proc if num_proc > 1 and len(rows) > BATCH else None,
        remove_columns=["i"],
        features=schema,
        cache_file_name=str(folder / "features.arrow"),
        load_from_cache_file=False,
        # A fingerprint of our own skips hashing the task and tokenizer (datasets caps it at
        # 64 characters, shard suffixes included).
        new_fingerprint="lmtune-" + hashlib.sha256(str(folder).encode()).hexdigest()[:24],
        desc="tokenizing",
    )
    rejects = [
        json.loads(line)
        for f in sorted(rejects_dir.glob("rejects-*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if line
    ]
    return FeatureSet(ds), rejects
