"""The data cache: prepared splits and encoded features reused across runs.

`lmtune train` on a million rows spends minutes reading, cleaning, splitting and tokenizing;
a second run on the same data with the same settings need not. One cache entry holds
everything those stages produced: the split files, rejects.jsonl and data_report.* as the
run folder gets them, the train rows (Arrow, JSON per row) and the encoded train features
(Arrow, memory-mapped).

The key is a SHA-256 over what decides that output: each input file's path, size and
modification time (a hub id: the id and revision), the tokenizer (its class, full
serialisation or vocabulary, special tokens, chat template), the task, the whole `data`
section except the keys that only say how to compute (num_proc, cache, cache_dir), the seed,
model.max_length and the task sections that shape encoding (preference, qa, rlhf). An edit
to any of these makes a new entry; old entries stay until deleted (`rm -r` the folder).

Location: data.cache_dir, else $LMTUNE_CACHE_DIR, else $XDG_CACHE_HOME/lmtune/data, else
~/.cache/lmtune/data. Entries appear whole or not at all (built under a temporary name and
renamed into place), so a crash or a concurrent run never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.data.features import FeatureSet, LazyRows, load_arrow

# Bump when the entry layout or what the pipeline writes changes: old entries then miss.
LAYOUT = 1
RUN_FILES = ("data/train.jsonl", "data/eval.jsonl", "data/test.jsonl", "rejects.jsonl")
REPORT_FILES = ("data_report.json", "data_report.md")
# data keys that change how the work is done, not its result.
NOT_IN_KEY = {"num_proc", "cache", "cache_dir"}


def cache_root(cfg: Config) -> Path:
    """The folder holding cache entries (see the module docstring for the order)."""
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    if os.environ.get("LMTUNE_CACHE_DIR"):
        return Path(os.environ["LMTUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmtune" / "data"


def _file_state(path: str) -> list[Any]:
    """Path, size and mtime of a file, or of every file under a folder; a hub id as is."""
    p = Path(path)
    if not p.exists():
        return [path]
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [
        [str(f.resolve()), (st := f.stat()).st_size, st.st_mtime_ns]
        for f in files
        if not f.name.startswith(".")
    ]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about the tokenizer that changes token ids or templates."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": sorted((str(k), v) for k, v in tokenizer.get_added_vocab().items()),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "bos": getattr(tokenizer, "add_bos_token", None),
        "eos": getattr(tokenizer, "add_eos_token", None),
    }
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def data_key(cfg: Config, tokenizer: Any) -> str:
    """The cache key for this config's data on this tokenizer."""
    from lmtune import __version__
    from lmtune.data.io import as_paths

    data = cfg.data.model_dump(mode="json")
    files = {s: [_file_state(p) for p in as_paths(data[s])] for s in ("train", "eval", "test")}
    for k in NOT_IN_KEY:
        data.pop(k, None)
    parts = {
        "layout": LAYOUT,
        "lmtune": __version__,
        "task": cfg.task,
        "files": files,
        "data": data,
        "seed": cfg.run.seed,
        "model": {"max_length": cfg.model.max_length, "revision": cfg.model.revision},
        "class_weights": cfg.train.class_weights,
        # Streaming takes as many rows as max_steps needs, so the steps shape the data too.
        "steps": [cfg.train.max_steps, cfg.train.batch_size, cfg.train.grad_accum]
        if cfg.data.streaming
        else None,
        "sections": {
            s: getattr(cfg, s).model_dump(mode="json")
            for s in ("preference", "qa", "rlhf")
            if hasattr(cfg, s)
        },
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    """dst as a hard link to src where possible (a million-row train.jsonl is hundreds of MB),
    else a copy. Split files are only ever replaced whole (write + rename), never edited in
    place, so the link cannot change the cache entry."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    shutil.copyfile(src, dst)


@dataclass
class CacheHit:
    """A complete cache entry: what prepare_data and the encoding would have produced."""

    folder: Path
    meta: dict[str, Any]

    def prepared(self, run_dir: Path) -> Any:
        """PreparedData from the entry (train rows lazily), its files copied into run_dir."""
        from lmtune.data.pipeline import PreparedData

        run_dir = Path(run_dir)
        for name in RUN_FILES + REPORT_FILES:
            src, dst = self.folder / "run" / name, run_dir / name
            if src.is_file():
                _link_or_copy(src, dst, link=name.startswith("data/"))
            elif name.startswith("data/"):
                dst.unlink(missing_ok=True)  # a stale split from an earlier run would mislead
        splits: dict[str, Any] = {"train": LazyRows(load_arrow(self.folder, "rows"))}
        for s in ("eval", "test"):
            path = self.folder / "run" / "data" / f"{s}.jsonl"
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                splits[s] = [json.loads(x) for x in text.splitlines() if x]
        m = self.meta
        report = json.loads((self.folder / "run" / "data_report.json").read_text("utf-8"))
        return PreparedData(m["format"], splits, m["labels"], m["label_weights"], report)

    def features(self) -> FeatureSet:
        """The encoded train features, memory-mapped."""
        return FeatureSet(load_arrow(self.folder, "features"))


def lookup(cfg: Config, key: str) -> CacheHit | None:
    """The entry for key when caching is on and a complete one exists."""
    if not cfg.data.cache:
        return None
    folder = cache_root(cfg) / key
    meta = folder / "meta.json"
    if not meta.is_file():
        return None
    try:
        return CacheHit(folder, json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None  # unreadable: rebuilt below and replaced


def work_dir(cfg: Config, key: str) -> Path:
    """A fresh folder to encode into: beside the entry it may become, else a temp folder."""
    if cfg.data.cache:
        root = cache_root(cfg)
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    return Path(tempfile.mkdtemp(prefix="lmtune-features-"))


def publish(
    cfg: Config, key: str, work: Path, run_dir: Path, prepared: Any, rejected: int
) -> Path | None:
    """Turn a work folder into the cache entry `key` (atomic rename); None when caching is off.

    The run folder's data files are copied in as they are now (tokenization rejects and token
    statistics included), so a hit reproduces them exactly.
    """
    if not cfg.data.cache:
        return None
    for name in RUN_FILES + REPORT_FILES:
        src = Path(run_dir) / name
        if src.is_file():
            dst = work / "run" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    meta = {
        "format": prepared.format,
        "labels": prepared.labels,
        "label_weights": prepared.label_weights,
        "rejected_at_tokenization": rejected,
        "rows": {k: len(v) for k, v in prepared.splits.items()},
    }
    # meta.json last: lookup() treats an entry without it as absent.
    (work / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    final = cache_root(cfg) / key
    try:
        os.replace(work, final)
    except OSError:  # another run published the same entry first: theirs is as good
        return final
    return final
