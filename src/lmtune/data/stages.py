"""Pipeline stages between reading and writing: validate, clean/dedupe, leakage, balance.

Rows travel as canonical dicts that also carry ORIGIN = (file, line, original row) so any
stage can turn a dropped row into a rejects.jsonl entry that points at the input; the
pipeline strips ORIGIN before rows leave it.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.data import dedupe as dd
from lmtune.data.clean import RowCleaner, content_key, length_problem, main_text
from lmtune.data.formats import (
    LABELLED,
    PREFERENCE,
    RowError,
    Schema,
    columns_of,
    natural_labels,
    resolve_mapping,
    to_canonical,
)
from lmtune.data.io import Record, Reject
from lmtune.data.split import balance
from lmtune.data.truncate import announce_truncated, char_limit, truncate_row
from lmtune.errors import UserError

ORIGIN = "__origin"  # (file, line, original row) while the pipeline runs; stripped on output


def reject_row(row: dict[str, Any], err: RowError | str, stage: str, kind: str = "") -> Reject:
    """A Reject for a canonical row dropped at `stage` (reason from err, counted as kind)."""
    file, line, raw = row[ORIGIN]
    if isinstance(err, RowError):
        return Reject(file, line, err.reason, stage, raw, err.kind)
    return Reject(file, line, err, stage, raw, kind or err)


def group_column(cfg: Config, mapping: dict[str, str]) -> str | None:
    """data.balance.column when it names a column other than the label, else None."""
    col = cfg.data.balance.column
    if col is None or col == "label" or col == mapping.get("label"):
        return None
    return col


def file_schema(
    records: list[Record], cfg: Config, fmt: str, labels_optional: bool = False
) -> Schema:
    """How to read one file's rows: its column mapping (with aliases) for the format."""
    mapping = resolve_mapping(columns_of(r.data for r in records), cfg.data.columns)
    group = group_column(cfg, mapping)
    return Schema(fmt, mapping, group, labels_optional)


def validate_records(
    records: list[Record], schema: Schema, allowed: list[str] | None
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Canonical rows (with _source and ORIGIN) and validation rejects for a file's records."""
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for rec in records:
        if rec.data is None:
            rejects.append(
                Reject(
                    rec.file,
                    rec.line,
                    rec.error or "unreadable row",
                    "validate",
                    rec.raw,
                    rec.kind or "",
                )
            )
            continue
        try:
            row = to_canonical(rec.data, schema, allowed)
        except RowError as e:
            rejects.append(Reject(rec.file, rec.line, e.reason, "validate", rec.data, e.kind))
            continue
        row["_source"] = rec.source
        row[ORIGIN] = (rec.file, rec.line, rec.data)
        rows.append(row)
    return rows, rejects


def require_rows(path: str, recs: list[Record]) -> None:
    """UserError for an input without rows: an empty file is a mistake, not an empty split."""
    if not recs:
        raise UserError(
            f"{path}: no rows found (the file is empty or holds only blank lines or a header)"
        )


def bad_fraction_message(
    path: str, n_read: int, rejects: list[Reject], max_frac: float, rejects_path: Path | None
) -> str | None:
    """The bad-fraction message for one file, or None when the file is acceptable."""
    frac = len(rejects) / n_read
    if frac <= max_frac:
        return None
    # json arrays, parquet and saved datasets count rows; text formats count lines.
    suffixes = [x.lower() for x in Path(path).suffixes]
    unit = "row" if Path(path).is_dir() or {".json", ".parquet"} & set(suffixes[-2:]) else "line"
    first = "; ".join(f"{unit} {r.line}: {r.reason}" for r in rejects[:5])
    where = f" Rejected rows are in {rejects_path}." if rejects_path else ""
    if any(r.reason.startswith("undecodable bytes") for r in rejects):
        where += (
            " The file is not UTF-8: if it was saved in another encoding (Excel and older "
            "Windows tools write latin-1/cp1252), set data.encoding: latin-1 (or cp1252)."
        )
    return (
        f"{path}: {len(rejects)} of {n_read} rows ({100 * frac:.1f}%) are invalid, above "
        f"data.max_bad_fraction={max_frac}. First problems: {first}.{where} Fix the file, "
        "map columns with data.columns, or raise data.max_bad_fraction."
    )


def drop_ties(
    rows: list[dict[str, Any]], rejects: list[Reject], keep_ties: bool = False
) -> list[dict[str, Any]]:
    """Drop pairwise rows whose preference is a tie (no preferred response) or a skip (the
    rater gave no judgement, `lmtune feedback`), each counted as such. With keep_ties, ties
    stay, marked `tie: true` (reward models train them toward equal rewards).

    A separate stage, not validation: ties and skips are valid data, so they must not count
    towards data.max_bad_fraction.
    """
    from lmtune.data.preference import SKIP, TIE

    kept = []
    for row in rows:
        tie = row.pop(TIE, False)
        if tie and keep_ties:
            kept.append({**row, "tie": True})
        elif tie:
            rejects.append(
                reject_row(
                    row,
                    "preference is a tie (no preferred response); ties are "
                    "dropped (preference.ties: keep trains reward models on them)",
                    "ties",
                    "tie",
                )
            )
        elif row.pop(SKIP, False):
            rejects.append(
                reject_row(
                    row,
                    "preference is skip (the rater passed on this pair); skips are dropped",
                    "ties",
                    "skip",
                )
            )
        else:
            kept.append(row)
    return kept


def truncation_limit(cfg: Config) -> int | None:
    """Characters kept from each end of an over-long text field (None: never cut)."""
    # QA splits long contexts into windows and uses all of them: never cut its rows.
    return None if cfg.task == "qa" else char_limit(cfg.model.max_length)


def clean_rows(
    rows: list[dict[str, Any]], fmt: str, cfg: Config, cleaner: RowCleaner, rejects: list[Reject]
) -> tuple[list[dict[str, Any]], int]:
    """Ties, row cleaning, length limits and truncation for a batch of rows, each row on its
    own; returns (kept rows, rows cut by truncation)."""
    c = cfg.data.clean
    if fmt in PREFERENCE:
        rows = drop_ties(rows, rejects, cfg.preference.ties == "keep")
    kept = []
    limit = truncation_limit(cfg)
    cut = 0
    for row in rows:
        try:
            cleaner(row, fmt)
        except RowError as e:
            rejects.append(reject_row(row, e, "clean"))
            continue
        problem = length_problem(row, fmt, c.min_chars, c.max_chars)
        if problem is not None:
            rejects.append(reject_row(row, problem, "length"))
            continue
        if limit is not None and truncate_row(row, limit):
            cut += 1
        kept.append(row)
    return kept, cut


def clean_pool(
    rows: list[dict[str, Any]], fmt: str, cfg: Config, cleaner: RowCleaner, rejects: list[Reject]
) -> list[dict[str, Any]]:
    """Ties, row cleaning, length limits, exact and near dedupe for one pool of rows."""
    c = cfg.data.clean
    kept, cut = clean_rows(rows, fmt, cfg, cleaner, rejects)
    limit = truncation_limit(cfg)
    if limit is not None:
        announce_truncated(cut, limit, cfg.model.max_length)
    if c.dedupe:
        labels = [r["label"] for r in kept] if fmt in LABELLED else None
        dups, conflicts = dd.exact_dedupe([content_key(r, fmt) for r in kept], labels)
        drop: set[int] = set()
        for d in dups:
            drop.add(d.index)
            rejects.append(
                reject_row(
                    kept[d.index],
                    f"exact duplicate of {kept[d.of]['_source']}",
                    "dedupe",
                    "exact duplicate",
                )
            )
        for group in conflicts:
            seen = ", ".join(f"'{kept[i]['label']}' ({kept[i]['_source']})" for i in group[:6])
            for i in group:
                drop.add(i)
                rejects.append(
                    reject_row(
                        kept[i],
                        f"conflicting labels: the same text has labels {seen}",
                        "dedupe",
                        "conflicting labels",
                    )
                )
        kept = [r for i, r in enumerate(kept) if i not in drop]
    nd = c.near_dedupe
    if nd.enabled and kept:
        dups_near = dd.near_dedupe(
            [main_text(r, fmt) for r in kept], nd.threshold, nd.shingle, nd.num_perm, cfg.run.seed
        )
        for d in dups_near:
            rejects.append(
                reject_row(
                    kept[d.index],
                    f"near duplicate of {kept[d.of]['_source']} (estimated Jaccard {d.similarity})",
                    "near_dedupe",
                    "near duplicate",
                )
            )
        drop = {d.index for d in dups_near}
        kept = [r for i, r in enumerate(kept) if i not in drop]
    return kept


# Above this many train rows, leakage.near auto checks exact overlap only (MinHash over every
# train row took about a quarter of `prepare` at 200k rows).
NEAR_LEAKAGE_AUTO_ROWS = 20_000


def near_leakage(cfg: Config, n_train: int) -> bool:
    """Whether the leakage check also looks for near duplicates (MinHash); says so when not."""
    mode = cfg.data.leakage.near
    if mode != "auto":
        return mode == "on"
    if cfg.data.clean.near_dedupe.enabled or n_train <= NEAR_LEAKAGE_AUTO_ROWS:
        return True
    from lmtune.runtime.dist import Dist

    Dist.get().print(
        f"leakage check: exact overlap only ({n_train:,} train rows > "
        f"{NEAR_LEAKAGE_AUTO_ROWS:,} and clean.near_dedupe is off); data.leakage.near: on "
        "adds near duplicates"
    )
    return False


def check_balance_config(cfg: Config, fmt: str, mapping: dict[str, str]) -> None:
    """UserError for balance settings that cannot work with this format (checked up front)."""
    b = cfg.data.balance
    if b.strategy == "none":
        return
    group = group_column(cfg, mapping)
    if group is None and fmt not in LABELLED:
        raise UserError(
            f"data.balance.strategy {b.strategy} on {fmt} rows needs data.balance.column "
            "naming a group column (these rows have no label)"
        )
    if b.strategy == "loss_weights" and group is not None:
        raise UserError(
            "data.balance.strategy loss_weights weights the loss per label; "
            f"data.balance.column is '{b.column}', not the label column. Use "
            "undersample/oversample for a group column, or unset the column"
        )


def balance_train(
    cfg: Config, splits: dict[str, list[dict[str, Any]]], rejects: list[Reject], group: str | None
) -> tuple[dict[str, Any] | None, int]:
    """Balance the train split in place; returns (report section or None, rows added)."""
    b = cfg.data.balance
    if b.strategy == "none":
        return None, 0
    if b.strategy == "loss_weights":  # nothing to resample: the weights go to the loss
        counts = Counter(r["label"] for r in splits["train"])
        before = {lab: counts[lab] for lab in natural_labels(counts)}
        section = {"strategy": "loss_weights", "before": before, "after": before}
        return {**section, "rows_added": 0, "rows_removed": 0, "column": "label"}, 0
    key = "label" if group is None else "_group"
    rows, dropped, section = balance(splits["train"], key, b.strategy, cfg.run.seed)
    for row, reason in dropped:
        rejects.append(reject_row(row, reason, "balance", "undersampled"))
    # Oversampled copies are separate rows; deep copies so editing one never edits another.
    n_orig = len(rows) - section["rows_added"]
    splits["train"] = rows[:n_orig] + [copy.deepcopy(r) for r in rows[n_orig:]]
    section["column"] = b.column or "label"
    return section, section["rows_added"]
