"""What `lmtune train` and `lmtune prepare` run for their data: prepare (or a cache hit),
then encode the train split once, batched, into Arrow, and put token statistics in the report.

The report's token lengths come from the encoded train features (no second tokenization)
and from one batched tokenizer call per 1,000 rows for the other splits.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.data import cache as dc
from lmtune.errors import UserError


@dataclass
class DataPlan:
    """The outcome of prepare_cached: the cache key and, on a hit, the entry."""

    key: str
    hit: dc.CacheHit | None


def _say(msg: str) -> None:
    from lmtune.runtime.dist import Dist

    Dist.get().print(msg)


def prepare_cached(cfg: Config, tokenizer: Any, out_dir: Path) -> tuple[Any, DataPlan]:
    """PreparedData for cfg: from the data cache when an entry matches, else prepare_data."""
    from lmtune.data.pipeline import prepare_data

    key = dc.data_key(cfg, tokenizer)
    hit = dc.lookup(cfg, key)
    if hit is not None:
        _say(f"data cache hit: {hit.folder} (prepare and tokenization skipped)")
        return hit.prepared(out_dir), DataPlan(key, hit)
    return prepare_data(cfg, out_dir, say=_say), DataPlan(key, None)


def row_text(row: dict[str, Any]) -> str:
    """A canonical row's text fields joined (what the report's token lengths count)."""
    if "messages" in row:
        parts = [m["content"] for m in row["messages"]]
    elif "prompt" in row:  # a preference pair (the prompt and its longer response), or a prompt
        prompt = row["prompt"]
        prompt = " ".join(m["content"] for m in prompt) if isinstance(prompt, list) else prompt
        responses = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
        responses = [
            " ".join(m["content"] for m in r) if isinstance(r, list) else r for r in responses
        ]
        parts = [prompt] + ([max(responses, key=len)] if responses else [])
    else:
        keys = ("text", "text_pair", "instruction", "input", "output", "question", "context")
        parts = [row[k] for k in keys if row.get(k)]
    return " ".join(parts)


def token_lengths(tokenizer: Any, rows: Sequence[dict[str, Any]], batch: int = 1000) -> list[int]:
    """Token counts of row_text for every row, one tokenizer call per batch of rows."""
    out: list[int] = []
    for start in range(0, len(rows), batch):
        texts = [row_text(r) for r in rows[start : start + batch]]
        out += [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return out


def set_token_stats(out_dir: Path, report: dict[str, Any], lengths: dict[str, list[int]]) -> None:
    """Put token length statistics per split into the report and rewrite data_report.*."""
    from lmtune.data.report import length_stats, to_markdown

    for split, values in lengths.items():
        if split in report.get("lengths", {}):
            report["lengths"][split]["tokens"] = length_stats(values)
    (out_dir / "data_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "data_report.md").write_text(to_markdown(report), encoding="utf-8")


def report_rejects(
    rejected: list[dict[str, Any]], rejects_path: Path | None, n_rows: int
) -> dict[str, Any]:
    """Rows rejected at tokenization: appended to rejects.jsonl, one console line, and the
    counts by reason (the tokenize section of data_report, returned too). UserError when
    every row was rejected."""
    if rejected and rejects_path is not None:
        with rejects_path.open("a", encoding="utf-8") as f:
            for r in rejected:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if rejected:
        _say(
            f"tokenize: dropped {len(rejected)} row(s) (e.g. {rejected[0]['source']}: "
            f"{rejected[0]['reason']}); each one is in {rejects_path}"
        )
    if n_rows and len(rejected) >= n_rows:
        raise UserError(
            f"all {n_rows} rows were rejected at tokenization, e.g. "
            f"{rejected[0]['source']}: {rejected[0]['reason']}; raise model.max_length "
            "or shorten the prompts"
        )
    by_reason = Counter(_reason_kind(r["reason"]) for r in rejected)
    section = {"rejected": len(rejected), "by_reason": dict(by_reason)}
    if rejects_path is not None:
        from lmtune.data.report import add_tokenize_section

        add_tokenize_section(rejects_path.parent, section)
    return section


def _reason_kind(reason: str) -> str:
    # Reasons carry row-specific numbers ("prompt has 700 tokens"); count them by their words.
    return re.sub(r"\d+", "N", reason)[:120]


def encode_train(
    cfg: Config,
    task: Any,
    tokenizer: Any,
    prepared: Any,
    out_dir: Path,
    plan: DataPlan,
    rejects_path: Path | None,
) -> Any:
    """The train split's features (a FeatureSet over Arrow): from the cache, else encoded
    with data.num_proc workers and published to the cache."""
    rows = prepared.splits["train"]
    if plan.hit is not None:
        n = plan.hit.meta.get("rejected_at_tokenization", 0)
        if n:
            _say(f"tokenize: dropped {n} row(s) (cached run; each one is in {rejects_path})")
        return plan.hit.features()
    from lmtune.data.encode import encode_split

    work = dc.work_dir(cfg, plan.key)
    feats, rejected = encode_split(task, rows, work, cfg.data.num_proc)
    try:
        prepared.report["tokenize"] = report_rejects(rejected, rejects_path, len(rows))
    except UserError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    lengths = {"train": feats.lengths}
    for s in ("eval", "test"):
        if prepared.splits.get(s):
            lengths[s] = token_lengths(tokenizer, prepared.splits[s])
    set_token_stats(Path(out_dir), prepared.report, lengths)
    from lmtune.runtime.dist import Dist

    # Only the main process publishes: the others hold no rejects.jsonl of their own.
    final = None
    if Dist.get().is_main:
        final = dc.publish(cfg, plan.key, work, Path(out_dir), prepared, len(rejected))
    if final is None:  # caching off: the Arrow files live until this process ends
        atexit.register(shutil.rmtree, work, True)
        return feats
    shutil.rmtree(work, ignore_errors=True)  # still there only when another run won the race
    return dc.CacheHit(final, {}).features()
