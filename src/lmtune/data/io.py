"""Readers: turn one input file (jsonl, json, csv, tsv, txt, parquet, save_to_disk) into records.

A record is one row as the user wrote it plus where it came from (file and 1-based line or row
number). Reading never validates fields; it only reports rows that cannot be parsed at all
(a bad JSON line) so the row, not the file, is rejected. Text files are decoded with
errors="surrogateescape": undecodable bytes survive as lone surrogates and validation rejects
the row that holds them instead of the whole read failing on one bad byte.
"""

from __future__ import annotations

import csv
import functools
import glob
import gzip
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import UserError

TEXT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt")
ACCEPTED = (
    'accepted inputs: .jsonl/.ndjson, .json (an array or {"data": [...]}), .csv, .tsv, '
    ".txt (one text per line, text format only), .parquet (each optionally .gz except parquet), "
    "or a folder written by datasets' save_to_disk"
)
# Files a `datasets` save_to_disk folder holds (Dataset: state.json, DatasetDict: the dict file).
_DATASET_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
# Split names tried for a DatasetDict, per config key, before falling back to "train".
_SPLIT_ALIASES = {
    "train": ("train",),
    "eval": ("eval", "validation", "valid", "dev"),
    "test": ("test",),
}


@dataclass
class Record:
    """One input row before validation: parsed data (or None) and where it came from."""

    file: str  # the path as the user wrote it in the config
    line: int  # 1-based line (jsonl/csv/tsv/txt) or row number (json/parquet/save_to_disk)
    data: dict[str, Any] | None
    error: str | None = None  # why the row could not be parsed (then data is None)
    kind: str | None = None  # short reason used to count errors of one sort together
    raw: Any = None  # what to show in rejects.jsonl when data is None

    @property
    def row(self) -> dict[str, Any] | None:
        """Alias of `data` (the parsed user row, None when the row could not be parsed)."""
        return self.data

    @property
    def source(self) -> str:
        """'<file name>:<line>' as carried in canonical rows' `_source`."""
        return f"{_basename(self.file)}:{self.line}"


@functools.lru_cache(maxsize=256)
def _basename(path: str) -> str:
    return Path(path).name


@dataclass
class Reject:
    """A dropped row: one line of rejects.jsonl, plus `kind` for counting in the report."""

    file: str
    line: int
    reason: str
    stage: str
    row: Any
    kind: str = field(default="")
    split: str = field(default="")  # the split the row was in, where a stage knows it

    def to_json(self) -> dict[str, Any]:
        """The rejects.jsonl object (source, line, reason, stage, row)."""
        return {
            "source": self.file,
            "line": self.line,
            "reason": self.reason,
            "stage": self.stage,
            "row": jsonable(self.row),
        }


def jsonable(value: Any) -> Any:
    """Make a value safe for json.dumps: lone surrogates -> U+FFFD, odd types -> str."""
    if isinstance(value, str):
        if _has_surrogate(value):
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return value
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def has_surrogate(text: str) -> bool:
    """True when text holds bytes that were not valid UTF-8 (decoded as lone surrogates)."""
    return _has_surrogate(text)


def as_paths(value: str | list[str] | None) -> list[str]:
    """Normalise a config value (one path, a list, or None) to a list; expand glob patterns."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        # Only treat it as a pattern when no file has that literal name.
        if any(ch in item for ch in "*?[") and not Path(item).expanduser().exists():
            matches = sorted(glob.glob(str(Path(item).expanduser())))
            if not matches:
                raise UserError(
                    f"{item}: the pattern matches no files (paths are relative to "
                    f"the current directory {Path.cwd()})"
                )
            out.extend(matches)
        else:
            out.append(item)
    return out


def read_file(
    path: str, split: str = "train", limit: int | None = None, encoding: str = "utf-8"
) -> list[Record]:
    """Read one input into records (at most `limit`); UserError when it cannot be read at all.

    `encoding` (data.encoding) decodes text files; parquet and saved datasets carry their own.
    """
    from lmtune.data import hub

    if hub.is_hub(path):
        return hub.records(path, split, limit)
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"{path}: no such file or folder (relative paths are relative to the "
            f"current directory {Path.cwd()}); {ACCEPTED}"
        )
    if p.is_dir():
        return _read_dataset_dir(path, p, split, limit)
    suffixes = [s.lower() for s in p.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    ext = (suffixes[-2] if compressed and len(suffixes) > 1 else suffixes[-1]) if suffixes else ""
    if ext == ".parquet" and not compressed:
        return _read_parquet(path, p, limit)
    if ext not in TEXT_SUFFIXES:
        raise UserError(f"{path}: unknown file type '{ext or '(no extension)'}'; {ACCEPTED}")
    raw = gzip.decompress(p.read_bytes()) if compressed else p.read_bytes()
    _refuse_binary(path, raw, encoding)
    text = _decode(path, raw, encoding)
    if ext in (".jsonl", ".ndjson"):
        _refuse_json_array(path, text)
        return _read_jsonl(path, text, limit)
    if ext == ".json":
        return _read_json(path, text, limit)
    if ext == ".txt":
        return _read_txt(path, text, limit)
    return _read_delimited(path, text, "\t" if ext == ".tsv" else ",", limit)


def _decode(path: str, raw: bytes, encoding: str) -> str:
    # utf-8-sig drops a byte-order mark that Excel and some Windows tools write; bytes that do
    # not decode survive as lone surrogates so validation rejects the row, not the whole read.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec, errors="surrogateescape")
    except LookupError:
        raise UserError(
            f"data.encoding '{encoding}' is not a known text encoding (needed for {path}); "
            "use e.g. utf-8, latin-1, cp1252 or utf-16"
        ) from None


# Signatures of binary formats that are sometimes saved under a text name by mistake.
_MAGIC = {
    b"PAR1": "a parquet file (name it .parquet)",
    b"\x1f\x8b": "gzip-compressed data (name it .jsonl.gz / .csv.gz)",
    b"PK\x03\x04": "a zip archive (an .xlsx workbook or zipped files: unzip or export to csv)",
    b"\x89HDF": "an HDF5 file",
    b"ARROW1": "an Arrow file (load it with datasets and save_to_disk, or write parquet)",
}


def _refuse_binary(path: str, raw: bytes, encoding: str) -> None:
    """UserError for binary data under a text suffix, instead of thousands of bad rows."""
    head = raw[:8192]
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise UserError(f"{path}: this is binary data, not text: it starts like {what}")
    if b"\x00" not in head or encoding.lower().startswith("utf-16"):
        return
    hint = (
        "; it looks like UTF-16 text: set data.encoding: utf-16"
        if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[1::2].count(0) > len(head) // 4
        else ""
    )
    raise UserError(
        f"{path}: this is binary data, not text (NUL bytes in the first "
        f"{len(head)} bytes){hint}; {ACCEPTED}"
    )


def _refuse_json_array(path: str, text: str) -> None:
    """A .jsonl file holding one JSON array (a .json file under the wrong name)."""
    start = text.lstrip()[:1]
    if start != "[":
        return
    try:
        obj = json.loads(text)
    except RecursionError:
        raise UserError(_too_deep(path, "the file")) from None
    except json.JSONDecodeError:
        obj = None
    what = f"one JSON array of {len(obj)} items" if isinstance(obj, list) else "a JSON array"
    raise UserError(
        f"{path}: the file holds {what} (it starts with '['), not JSON Lines (one object per "
        "line); rename it to .json, which reads an array of row objects"
    )


def _lines(text: str) -> list[str]:
    # Split on \n only (str.splitlines would also split on \x0b, \x1c, U+2028 inside a row).
    lines = text.split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parse_json_line(path: str, n: int, line: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return Record(
            path, n, None, f"invalid JSON: {exc.msg} (column {exc.colno})", "invalid JSON", line
        )
    except RecursionError:
        raise UserError(_too_deep(path, f"line {n}")) from None
    if not isinstance(obj, dict):
        kind = "row is not a JSON object"
        return Record(path, n, None, f"{kind} (got {type(obj).__name__})", kind, obj)
    return Record(path, n, obj)


def _too_deep(path: str, where: str) -> str:
    return (
        f"{path}, {where}: JSON nested too deeply to read (more than about "
        f"{sys.getrecursionlimit()} levels of [ and {{); rows are flat objects of text fields: "
        "fix or remove that row"
    )


def _read_jsonl(path: str, text: str, limit: int | None) -> list[Record]:
    out: list[Record] = []
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing newline) are not rows
        out.append(_parse_json_line(path, n, line))
        if limit is not None and len(out) >= limit:
            break
    return out


def _read_json(path: str, text: str, limit: int | None) -> list[Record]:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise UserError(_too_deep(path, "the file")) from None
    except json.JSONDecodeError as exc:
        # Many ".json" files are really JSON Lines (one object per line): read them that way.
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, text, limit)
        raise UserError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}); a .json file must hold an array of row objects or "
            '{"data": [...]}; use .jsonl for one object per line'
        ) from None
    from lmtune.data.squad import is_squad, squad_records

    if is_squad(obj):  # nested SQuAD articles: one record per question
        return squad_records(path, obj["data"], limit)
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        keys = ", ".join(list(obj)[:10]) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(
            f"{path}: a .json file must hold an array of row objects or an object "
            f'with a "data" list; found {keys}'
        )
    out: list[Record] = []
    for i, item in enumerate(obj[:limit] if limit else obj, start=1):
        if isinstance(item, dict):
            out.append(Record(path, i, item))
        else:
            kind = "row is not a JSON object"
            out.append(Record(path, i, None, f"{kind} (got {type(item).__name__})", kind, item))
    return out


def _read_txt(path: str, text: str, limit: int | None) -> list[Record]:
    out: list[Record] = []
    for n, line in enumerate(_lines(text), start=1):
        if line.strip():
            out.append(Record(path, n, {"text": line}))
            if limit is not None and len(out) >= limit:
                break
    return out


# A fully quoted field with doubled quotes inside ("He said ""hi""") proves CSV-style quoting.
_CSV_QUOTED = re.compile(r'(?:^|\t)"(?:[^"\n]|"")*""(?:[^"\n]|"")*"(?=\t|\r?$)', re.M)


def _tsv_quoting(text: str) -> int:
    """Pick the quoting rule for a TSV file.

    TSV files from GLUE-style corpora use no quoting and hold literal quote characters
    (MRPC: `"I think," he said`), while pandas writes CSV-style quoted fields. Standard
    quoting would eat the literal quotes (or merge lines), so use it only on evidence.
    """
    if _CSV_QUOTED.search(text):
        return csv.QUOTE_MINIMAL
    none_rows = list(
        csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    )
    widths = {len(r) for r in none_rows if r}
    if len(widths) > 1:
        # Rows of different widths with no quoting: quoted tabs/newlines may explain them.
        quoted = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t") if r]
        if len({len(r) for r in quoted}) == 1:
            return csv.QUOTE_MINIMAL
    return csv.QUOTE_NONE


def _read_delimited(path: str, text: str, delimiter: str, limit: int | None) -> list[Record]:
    csv.field_size_limit(2**31 - 1)  # long documents exceed the 128 KiB default
    quoting = _tsv_quoting(text) if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    out: list[Record] = []
    prev = 0
    for values in reader:
        start, prev = prev + 1, reader.line_num  # first physical line of this record
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in values]
            continue
        if len(values) != len(header):
            kind = "wrong number of fields"
            reason = f"{kind}: {len(values)} but the header has {len(header)}"
            out.append(Record(path, start, None, reason, kind, delimiter.join(values)))
        else:
            out.append(Record(path, start, dict(zip(header, values, strict=True))))
        if limit is not None and len(out) >= limit:
            break
    if header is None:
        return []
    return out


def _read_parquet(path: str, p: Path, limit: int | None) -> list[Record]:
    import pyarrow.parquet as pq  # imported here: only parquet inputs pay for it

    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: cannot read as parquet ({exc})") from None
    out: list[Record] = []
    for batch in pf.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            out.append(Record(path, len(out) + 1, _decode_bytes(item)))
            if limit is not None and len(out) >= limit:
                return out
    return out


def _decode_bytes(row: dict[str, Any]) -> dict[str, Any]:
    # Binary columns: decode like text files so bad bytes reject the row, not the read.
    return {
        k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
        for k, v in row.items()
    }


def _read_dataset_dir(path: str, p: Path, split: str, limit: int | None) -> list[Record]:
    if not any((p / m).exists() for m in _DATASET_MARKERS):
        from lmtune.data import hub

        if hub.has_data_files(p):  # a data folder (or a dataset's own layout): load_dataset
            return hub.records(path, split, limit)
        raise UserError(
            f"{path}: a folder, but not one written by datasets' save_to_disk (no "
            f"{', '.join(_DATASET_MARKERS)}); pass a file inside it instead; "
            f"{ACCEPTED}"
        )
    import datasets  # imported here: importing datasets costs about a second

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ...
        raise UserError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        wanted = [*_SPLIT_ALIASES.get(split, (split,)), "train"]
        chosen = next((n for n in wanted if n in ds), None)
        if chosen is None:
            raise UserError(
                f"{path}: the saved DatasetDict has splits {', '.join(names)} but "
                f"none named {' or '.join(dict.fromkeys(wanted))}; point data.{split} "
                "at the split folder instead (e.g. PATH/<split>)"
            )
        ds = ds[chosen]
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return [Record(path, i, _decode_bytes(dict(item))) for i, item in enumerate(ds, start=1)]
