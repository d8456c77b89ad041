"""Inputs read through `datasets`: hub ids, local dataset folders, and streaming.

    data.train: hf://datasets/NAME[/CONFIG][@SPLIT]

NAME is `owner/name` (two segments) or a bare name (one segment); a third segment is the
config: `hf://datasets/nyu-mll/glue/sst2@validation`. Without @SPLIT the split follows the
config key (train, else eval/validation/dev, test). A local folder that is not a
save_to_disk folder (a data folder of jsonl/csv/parquet files, or a folder with a
dataset's own layout) loads through `datasets.load_dataset(folder)`; load_dataset also
looks for a local folder of the same name before the hub, so a downloaded copy works offline.

data.streaming: true reads every input as a stream (datasets' IterableDataset) and stops
once it holds the rows train.max_steps needs; eval/test rows come out of the same stream by
a deterministic hash of each row (so a row lands in the same split on every run, whatever
order the stream gives), and the eval split stops at data.split.max_eval_rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmtune.errors import UserError

PREFIX = "hf://datasets/"
_SPLITS = {"train": ("train",), "eval": ("validation", "eval", "valid", "dev"), "test": ("test",)}


def is_hub(path: str) -> bool:
    """Whether a data path is a hub id (hf://datasets/...)."""
    return path.startswith(PREFIX)


def parse_hub(path: str) -> tuple[str, str | None, str | None]:
    """(name, config, split) of an hf://datasets/NAME[/CONFIG][@SPLIT] path."""
    rest = path[len(PREFIX) :]
    rest, _, split = rest.partition("@")
    parts = [p for p in rest.split("/") if p]
    if not parts or len(parts) > 3:
        raise UserError(
            f"{path}: write a hub dataset as hf://datasets/NAME[/CONFIG][@SPLIT], where NAME is "
            "owner/name or a bare name (e.g. hf://datasets/nyu-mll/glue/sst2@validation)"
        )
    name = "/".join(parts[:2])
    return name, (parts[2] if len(parts) == 3 else None), (split or None)


def _pick_split(path: str, names: list[str], wanted: str | None, key: str) -> str:
    tries = [wanted] if wanted else [*_SPLITS.get(key, (key,)), "train"]
    chosen = next((n for n in tries if n in names), None)
    if chosen is None:
        raise UserError(
            f"{path}: the dataset has splits {', '.join(names)}, none named "
            f"{' or '.join(dict.fromkeys(tries))}; add @SPLIT (e.g. {path}@{names[0]})"
        )
    return chosen


def load(path: str, key: str, streaming: bool = False) -> Any:
    """A datasets Dataset (IterableDataset when streaming) for a hub id or a local folder."""
    import datasets

    if is_hub(path):
        name, config, split = parse_hub(path)
        args: tuple[Any, ...] = (name, config)
    else:
        args, split = (str(Path(path).expanduser()),), None
    try:
        loaded = datasets.load_dataset(*args, streaming=streaming)
    except Exception as exc:  # offline, unknown id, bad folder: datasets raises many types
        raise UserError(
            f"{path}: datasets.load_dataset failed ({type(exc).__name__}: {exc}); check the "
            "name and config, that the hub is reachable (or a local copy exists), or point "
            "data.train at a file"
        ) from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded = loaded[_pick_split(path, list(loaded), split, key)]
    return loaded


DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".arrow", ".py"}


def has_data_files(folder: Path) -> bool:
    """Whether a folder holds files load_dataset can read (searched two levels deep)."""
    for pattern in ("*", "*/*"):
        for f in folder.glob(pattern):
            if f.is_file() and (f.suffix.lower() in DATA_SUFFIXES or f.name.endswith(".gz")):
                return True
    return False


def records(path: str, key: str, limit: int | None) -> list[Any]:
    """Records of a hub id or a local dataset folder (split picked per config key)."""
    from lmtune.data.io import Record, _decode_bytes

    ds = load(path, key)
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return [Record(path, i, _decode_bytes(dict(item))) for i, item in enumerate(ds, start=1)]


def row_hash(row: dict[str, Any], seed: int) -> float:
    """A number in [0, 1) fixed by the row's content and the seed (streaming splits)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _stream_source(path: str) -> Any:
    """An IterableDataset for any input: hub id, folder, save_to_disk folder or data file."""
    import datasets

    p = Path(path).expanduser()
    if is_hub(path) or (p.is_dir() and not (p / "state.json").exists()):
        if p.is_dir() and (p / "dataset_dict.json").exists():
            return datasets.load_from_disk(str(p))["train"].to_iterable_dataset()
        return load(path, "train", streaming=True)
    if p.is_dir():
        return datasets.load_from_disk(str(p)).to_iterable_dataset()
    ext = "".join(p.suffixes[-2:]).lower().replace(".gz", "").lstrip(".")
    builder = {"jsonl": "json", "ndjson": "json", "tsv": "csv", "txt": "text"}.get(ext, ext)
    kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
    return datasets.load_dataset(
        builder, data_files=str(p), split="train", streaming=True, **kwargs
    )


def stream_records(cfg: Any, rows_needed: int) -> dict[str, list[tuple[str, list[Any]]]]:
    """Records per split from streamed train inputs, split by row_hash (see module doc)."""
    from lmtune.data.io import Record, _decode_bytes, as_paths

    d = cfg.data
    ev_frac = 0.0 if d.eval else d.split.eval
    te_frac = 0.0 if d.test else d.split.test
    cap = d.split.max_eval_rows
    out: dict[str, list[tuple[str, list[Any]]]] = {"train": [], "eval": [], "test": []}
    counts = {"train": 0, "eval": 0, "test": 0}
    for path in as_paths(d.train):
        recs: dict[str, list[Any]] = {"train": [], "eval": [], "test": []}
        for n, item in enumerate(_stream_source(path), start=1):
            row = _decode_bytes(dict(item))
            u = row_hash(row, cfg.run.seed)
            split = "eval" if u < ev_frac else "test" if u < ev_frac + te_frac else "train"
            if split == "eval" and cap is not None and counts["eval"] >= cap:
                split = "train"
            recs[split].append(Record(path, n, row))
            counts[split] += 1
            if counts["train"] >= rows_needed and (not ev_frac or counts["eval"] >= (cap or 0)):
                break
        for s, rs in recs.items():
            if rs:
                out[s].append((path, rs))
    for s in ("eval", "test"):
        for path in as_paths(getattr(d, s)):  # eval/test files given: read whole (small)
            out[s].append((path, list(_stream_as_records(path))))
    return out


def _stream_as_records(path: str) -> Any:
    from lmtune.data.io import Record, _decode_bytes

    for n, item in enumerate(_stream_source(path), start=1):
        yield Record(path, n, _decode_bytes(dict(item)))


def rows_for_steps(cfg: Any) -> int:
    """Train rows a streamed run needs: max_steps optimizer steps of full batches."""
    t = cfg.train
    if t.max_steps <= 0:
        raise UserError(
            "data.streaming: true needs train.max_steps (a stream has no length to count "
            "epochs over); set train.max_steps, or turn streaming off"
        )
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return t.max_steps * t.batch_size * t.grad_accum * world
