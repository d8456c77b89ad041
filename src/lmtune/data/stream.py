"""Reading in batches and spilling rows to disk: what keeps prepare's memory flat in the rows.

JSON Lines files (the common large input, plain or .gz) are read line by line, so a 1 GB file
never sits in memory as bytes, text and a list of lines at once; parquet files go batch by
batch. Other inputs (csv/tsv, json arrays, save_to_disk folders, the Hub) are read whole as
before and handed out in batches. Rows between stages live in a Spill: an Arrow file of one
JSON string per row, written in batches and read back memory-mapped.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from itertools import chain, islice, pairwise
from pathlib import Path
from typing import IO, Any

from lmtune.data.io import Record, _parse_json_line, _refuse_binary, read_file
from lmtune.errors import UserError

BATCH = 5_000  # rows per batch: large enough to amortise Arrow, small in memory


def _codec(path: str, encoding: str) -> str:
    """The codec io.read_file would decode with (utf-8 reads through a byte-order mark)."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        codecs.lookup(codec)
    except LookupError:
        raise UserError(
            f"data.encoding '{encoding}' is not a known text encoding (needed for {path}); "
            "use e.g. utf-8, latin-1, cp1252 or utf-16"
        ) from None
    return codec


def _jsonl_path(path: str) -> tuple[Path, bool] | None:
    """(path, gzipped) for a JSON Lines file read line by line; None for anything else."""
    from lmtune.data import hub

    if hub.is_hub(path):
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    suffixes = [s.lower() for s in p.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = suffixes[-2] if gz and len(suffixes) > 1 else suffixes[-1] if suffixes else ""
    return (p, gz) if ext in (".jsonl", ".ndjson") else None


def _open_text(p: Path, gz: bool, codec: str) -> IO[str]:
    # newline="\n": lines end at \n only, as io._lines splits them (a \r stays in the line).
    if gz:
        return gzip.open(p, "rt", encoding=codec, errors="surrogateescape", newline="\n")
    return p.open(encoding=codec, errors="surrogateescape", newline="\n")


def _iter_jsonl(path: str, p: Path, gz: bool, limit: int | None, codec: str) -> Iterator[Record]:
    with gzip.open(p, "rb") if gz else p.open("rb") as raw:
        _refuse_binary(path, raw.read(8192), codec)
    with _open_text(p, gz, codec) as f:
        n = kept = 0
        for n, line in enumerate(f, start=1):  # noqa: B007 (n is the line number)
            line = line[:-1] if line.endswith("\n") else line
            line = line[:-1] if line.endswith("\r") else line
            if not line.strip():
                continue  # blank lines (often a trailing newline) are not rows
            yield _parse_json_line(path, n, line)
            kept += 1
            if limit is not None and kept >= limit:
                return


def _starts_with_array(p: Path, gz: bool, codec: str) -> bool:
    with _open_text(p, gz, codec) as f:
        head = f.read(4096)
        while head and not head.strip():
            head = f.read(4096)
    return head.lstrip()[:1] == "["


def iter_records(path: str, split: str, limit: int | None, encoding: str) -> Iterator[Record]:
    """The records of one input in file order, read in batches where the format allows."""
    found = _jsonl_path(path)
    if found is not None:
        p, gz = found
        codec = _codec(path, encoding)
        # A JSON array under a .jsonl name, or undecodable text: the whole-file reader says why.
        if not _starts_with_array(p, gz, codec):
            return _iter_jsonl(path, p, gz, limit, codec)
    elif Path(path).expanduser().suffix.lower() == ".parquet" and Path(path).is_file():
        return _iter_parquet(path, Path(path).expanduser(), limit)
    return iter(read_file(path, split, limit, encoding))


def _iter_parquet(path: str, p: Path, limit: int | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    from lmtune.data.io import _decode_bytes

    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: cannot read as parquet ({exc})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            n += 1
            yield Record(path, n, _decode_bytes(item))
            if limit is not None and n >= limit:
                return


def head_and_rest(records: Iterator[Record], sample: int = 1000) -> tuple[list[Record], Any]:
    """The first records up to `sample` parsed rows (format and column detection look at
    those) and an iterator over all records, head included."""
    head: list[Record] = []
    parsed = 0
    for rec in records:
        head.append(rec)
        parsed += rec.data is not None
        if parsed >= sample:
            break
    return head, chain(head, records)


def batches(items: Any, size: int = BATCH) -> Iterator[list[Any]]:
    """Consecutive lists of up to `size` items."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class Spill:
    """Rows appended in batches to an Arrow file (one JSON string per row), then read back
    memory-mapped. JSON with ASCII escapes keeps any row exactly, lone surrogates of
    undecodable input bytes included, which Arrow's UTF-8 strings could not hold."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        self.n = 0
        self._schema = pa.schema([("row", pa.large_string())])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self._schema)
        self._ds: Any = None

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (values JSON cannot hold are written as their str())."""
        import pyarrow as pa

        if not rows:
            return
        text = [json.dumps(r, default=str) for r in rows]
        self._writer.write_batch(pa.record_batch([pa.array(text, pa.large_string())], self._schema))
        self.n += len(rows)

    def close(self) -> Any:
        """Finish the file; returns it as a memory-mapped datasets.Dataset."""
        import pyarrow as pa

        if self._ds is None:
            if not self.n:  # datasets cannot open a stream without a batch
                self._writer.write_batch(
                    pa.record_batch([pa.array([], pa.large_string())], self._schema)
                )
            self._writer.close()
            self._sink.close()
            import datasets

            self._ds = datasets.Dataset.from_file(str(self.path))
        return self._ds


def iter_rows(ds: Any, indices: Sequence[int] | None = None) -> Iterator[Any]:
    """(index, row) for the rows of a spilled dataset in order (only `indices`, if given).

    Sorted indices (every pass prepare makes) stream the file batch by batch with plain
    reads: a memory map would leave the whole file resident in this process by the end of
    a pass, as large as the rows it was written to keep out of memory.
    """
    import pyarrow as pa

    if indices is not None and any(b <= a for a, b in pairwise(indices)):
        texts = ds.data.column("row").take(list(indices)).to_pylist()
        yield from ((i, json.loads(t)) for i, t in zip(indices, texts, strict=True))
        return
    if indices is None:
        yield from enumerate(map(json.loads, texts_from(ds.cache_files[0]["filename"])))
        return
    wanted = iter(indices)
    nxt = next(wanted, None)
    start = 0
    with pa.OSFile(ds.cache_files[0]["filename"]) as f:
        for batch in pa.ipc.open_stream(f):
            n, col = batch.num_rows, batch.column(0)
            while nxt is not None and nxt < start + n:
                yield nxt, json.loads(col[nxt - start].as_py())
                nxt = next(wanted, None)
            if nxt is None:
                return
            start += n


def texts_from(path: Path | str, start: int = 0) -> Iterator[str]:
    """The strings of a one-column Arrow stream file (Spill, write_rows) from row `start` on,
    with plain reads: nothing stays resident once a batch is consumed."""
    import pyarrow as pa

    pos = 0
    with pa.OSFile(str(path)) as f:
        for batch in pa.ipc.open_stream(f):
            n = batch.num_rows
            if pos + n > start:
                yield from batch.column(0).slice(max(0, start - pos)).to_pylist()
            pos += n


def remove_dir(path: Path) -> None:
    """Remove a spill folder (best effort: a memory-mapped file may still be open)."""
    shutil.rmtree(path, ignore_errors=True)


# Work folders are named after their machine and process, so a later prepare can tell the
# leftovers of a killed one from the live folders of another process of the same run.
_WORK_DIR = re.compile(r"\.(prepare|train-rows)-(?P<host>.+)-(?P<pid>\d+)-[^-]+")


def work_dir(parent: Path, kind: str) -> Path:
    """A fresh work folder `.KIND-HOST-PID-XXXX` under parent (kind: prepare or train-rows)."""
    prefix = f".{kind}-{socket.gethostname().replace('-', '_')}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftover_work(parent: Path) -> list[str]:
    """Remove the work folders a killed prepare on this machine left under parent."""
    host = socket.gethostname().replace("-", "_")
    gone = []
    for p in parent.iterdir() if parent.is_dir() else ():
        m = _WORK_DIR.fullmatch(p.name)
        if m and p.is_dir() and m["host"] == host and not _alive(int(m["pid"])):
            remove_dir(p)
            gone.append(p.name)
    return gone
