"""Encoded features and prepared rows read lazily from memory-mapped Arrow files.

The loop needs three things from its training features: len(), features[i] (a dict of lists
of ints and a "length") and every example's length for the step planner. FeatureSet gives
those from an Arrow table (datasets.Dataset, memory-mapped, so a million encoded rows cost
page cache, not Python objects); `lengths` is one column read at once. Features added after
encoding (forgetting's replay rows) ride along in a small Python list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _shards(folder: Path, stem: str) -> list[Path]:
    """The Arrow files datasets.map wrote for `stem` (one, or one per worker process)."""
    single = folder / f"{stem}.arrow"
    if single.is_file():
        return [single]
    return sorted(folder.glob(f"{stem}_*_of_*.arrow"))


def load_arrow(folder: Path, stem: str) -> Any:
    """A memory-mapped datasets.Dataset over the Arrow file(s) `stem` in `folder`."""
    import datasets

    files = _shards(Path(folder), stem)
    if not files:
        raise FileNotFoundError(f"no {stem}*.arrow in {folder}")
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def hash_text(text: str) -> str:
    """A short stable hash of a string."""
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


EXTRA = "__json"  # encode.py's column for values the typed columns do not hold


def _feature(stored: dict[str, Any]) -> dict[str, Any]:
    """The feature dict encode() returned, from one stored Arrow row."""
    out = {k: v for k, v in stored.items() if v is not None and k != EXTRA}
    if stored.get(EXTRA):
        out.update(json.loads(stored[EXTRA]))
    return out


class FeatureSet(Sequence):
    """Training features: a memory-mapped Arrow dataset plus an optional list appended to it.

    features[i] is a plain dict; columns a feature lacked (Arrow stores None there) are left
    out, so every task sees exactly the keys its encode() returned.
    """

    def __init__(self, dataset: Any, extra: list[dict[str, Any]] | None = None) -> None:
        self.dataset = dataset
        self.extra = list(extra or [])
        self._n = len(dataset)
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return self._n + len(self.extra)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        if i < 0:
            i += len(self)
        if i >= self._n:
            return self.extra[i - self._n]
        return _feature(self.dataset[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Batches of rows from Arrow: far cheaper than one lookup per row.
        for batch in self.dataset.iter(batch_size=1000):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys), strict=True):
                yield _feature(dict(zip(keys, values, strict=True)))
        yield from self.extra

    def __add__(self, other: list[dict[str, Any]]) -> FeatureSet:
        out = FeatureSet(self.dataset, self.extra + list(other))
        if self._lengths is not None:
            out._lengths = self._lengths + [int(f["length"]) for f in other]
        return out

    @property
    def lengths(self) -> list[int]:
        """Every feature's "length", read as one Arrow column (what the step planner needs)."""
        if self._lengths is None:
            column = self.dataset.data.column("length").to_pylist() if self._n else []
            self._lengths = [int(x) for x in column] + [int(f["length"]) for f in self.extra]
        return self._lengths

    @property
    def fingerprint(self) -> str:
        """Identifies the encoded examples without reading them: the Arrow files' own
        fingerprint (their cache folder is keyed by data, tokenizer and settings) plus the
        appended features."""
        extra = json.dumps(self.extra, sort_keys=True, default=str)
        return f"{self.dataset._fingerprint}:{self._n}:{hash_text(extra)}"

    def to_list(self) -> list[dict[str, Any]]:
        """Every feature as a Python dict (for tasks that edit features in place, e.g. DPO's
        reference log-probs)."""
        return list(self)


class LazyRows(Sequence):
    """Canonical rows stored as one JSON string per row in an Arrow file, decoded on access.

    What a cache hit gives as the prepared train split: `len()` and iteration work like a list
    without a million dicts in memory.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        return json.loads(self.dataset[i]["row"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.file is not None:
            # Plain reads, batch by batch: iterating the memory map would leave the whole file
            # resident in this process (and in every worker forked from it) after one pass.
            from lmtune.data.stream import texts_from

            yield from map(json.loads, texts_from(self.file))
            return
        for batch in self.dataset.iter(batch_size=1000):
            yield from (json.loads(r) for r in batch["row"])

    # Compared and concatenated like the list of rows it stands for.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, LazyRows)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*self, *other]

    @property
    def file(self) -> Path | None:
        """The one Arrow file the rows are read from, in order (None: several, or a subset)."""
        files = self.dataset.cache_files
        if len(files) != 1 or self.dataset._indices is not None:
            return None
        return Path(files[0]["filename"])


def write_rows(path: Path, rows: Sequence[dict[str, Any]], chunk: int = 10_000) -> None:
    """Rows as a one-column Arrow file of JSON strings, written in chunks (bounded memory).

    JSON keeps each row exactly as the pipeline made it: Arrow's own struct columns would
    unify the rows' keys and fill the gaps with None.
    """
    import pyarrow as pa

    source = rows.file if isinstance(rows, LazyRows) else None
    if source is not None:  # already one JSON string per row: link (or copy) the file
        import os
        import shutil

        path.unlink(missing_ok=True)
        try:
            os.link(source, path)
        except OSError:  # another filesystem: copy
            shutil.copyfile(source, path)
        return
    schema = pa.schema([("row", pa.large_string())])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(rows), chunk):
            part = [json.dumps(r, ensure_ascii=False) for r in rows[start : start + chunk]]
            writer.write_batch(pa.record_batch([pa.array(part, pa.large_string())], schema))
        if not len(rows):
            writer.write_batch(pa.record_batch([pa.array([], pa.large_string())], schema))
