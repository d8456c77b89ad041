"""prepare_data: read -> validate -> clean -> dedupe -> split -> leakage -> balance -> write.

The one entry point tasks and the CLI use. Nothing is dropped silently: every row that does
not reach an output split is a line in rejects.jsonl with its file, line, stage and reason,
and is counted in data_report.json, so rows_in + rows_added == rows_out + drops.
"""

from __future__ import annotations

import atexit
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import Config
from lmtune.data import coldpath as cp
from lmtune.data.clean import RowCleaner
from lmtune.data.features import LazyRows
from lmtune.data.formats import (
    LABELLED,
    PREFERENCE,
    RowError,
    Schema,
    columns_of,
    detect_format,
    natural_labels,
    resolve_mapping,
)
from lmtune.data.io import Reject, as_paths, read_file
from lmtune.data.report import build_report, console_lines, to_markdown
from lmtune.data.split import class_weights, group_split_indices, split_indices
from lmtune.data.stages import (
    ORIGIN,
    bad_fraction_message,
    balance_train,
    check_balance_config,
    drop_ties,
    file_schema,
    group_column,
    reject_row,
    require_rows,
    validate_records,
)
from lmtune.data.stream import (
    Spill,
    batches,
    head_and_rest,
    iter_records,
    remove_dir,
    remove_leftover_work,
    work_dir,
)
from lmtune.data.truncate import cap_eval
from lmtune.errors import UserError

Rows = list[dict[str, Any]]


@dataclass
class PreparedData:
    """The outcome of prepare_data: canonical rows per split plus what the report holds."""

    format: str
    splits: dict[str, list[dict]]
    labels: list[str] | None
    label_weights: list[float] | None
    report: dict


def _strip(rows: Rows) -> Rows:
    for r in rows:
        r.pop(ORIGIN, None)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)  # readers never see a half-written file


Opened = dict[str, list[tuple[str, list[Any], Any]]]  # split -> (path, head, all records)


def _open_all(cfg: Config) -> Opened:
    """Every input opened: its first records (column detection) and an iterator over all."""
    files = {s: as_paths(getattr(cfg.data, s)) for s in ("train", "eval", "test")}
    if not files["train"]:
        raise UserError(
            "data.train is not set: point it at a file (jsonl, json, csv, tsv, txt, parquet) "
            "or a datasets save_to_disk folder"
        )
    opened: Opened = {}
    if cfg.data.streaming:  # only the rows max_steps needs, split by a hash of each row
        from lmtune.data.hub import rows_for_steps, stream_records

        records = stream_records(cfg, rows_for_steps(cfg))
        opened = {s: [(p, recs, iter(recs)) for p, recs in per] for s, per in records.items()}
    else:
        d = cfg.data
        for s, ps in files.items():
            opened[s] = [(p, *head_and_rest(iter_records(p, s, d.limit, d.encoding))) for p in ps]
    for per_file in opened.values():
        for path, head, _ in per_file:
            require_rows(path, head)
    return opened


def _read_pools(
    cfg: Config, fmt: str, opened: Opened, cleaner: RowCleaner, out_dir: Path, work: Path
) -> tuple[dict[str, cp.Pool], list[Reject], list[dict[str, Any]]]:
    """Validate, clean and spill every file batch by batch, then dedupe each split's pool.
    UserError (after writing rejects.jsonl) if any file is too bad."""
    rejects: list[Reject] = []
    inputs: list[dict[str, Any]] = []
    pools: dict[str, cp.Pool] = {}
    problems: list[str] = []
    for split, per_file in opened.items():
        if not per_file:
            continue
        pool = cp.Pool(Spill(work / f"{split}.arrow"))
        for path, head, records in per_file:
            schema = file_schema(head, cfg, fmt)
            n, bad = cp.read_file_into(pool, path, records, schema, cfg, fmt, cleaner, rejects)
            inputs.append({"split": split, "file": path, "rows_read": n, "rows_rejected": len(bad)})
            msg = cp.check_file(path, n, bad, cfg, out_dir)
            if msg:
                problems.append(msg)
        pools[split] = pool
    if problems:  # every offending file at once, so one fix-up pass is enough
        bad_rows = [r.to_json() for r in rejects if r.stage == "validate"]
        _write_jsonl(out_dir / "rejects.jsonl", bad_rows)
        raise UserError("\n".join(problems))
    for pool in pools.values():
        cp.finish_pool(pool, cfg, fmt, rejects)
    return pools, rejects, inputs


def _split(cfg: Config, fmt: str, pools: dict[str, cp.Pool]) -> dict[str, Any]:
    """Files win; splits without a file take their configured fraction out of train.
    Train stays on disk (a RowsView); eval and test become lists."""
    train = pools["train"]
    view = train.view()
    eval_frac = 0.0 if "eval" in pools else cfg.data.split.eval
    test_frac = 0.0 if "test" in pools else cfg.data.split.test
    strat = None
    if fmt in LABELLED and cfg.data.split.stratify:
        strat = [train.labels[i] for i in train.keep]
    if cfg.data.split.group_by:  # whole groups (articles) per split: no group in two splits
        key = cfg.data.split.group_by
        groups = [g for chunk in batches(view) for g in _group_keys(chunk, key)]
        idx = group_split_indices(groups, eval_frac, test_frac, cfg.run.seed)
    else:
        idx = split_indices(len(view), eval_frac, test_frac, cfg.run.seed, strat)
    idx = cap_eval(idx, cfg.data.split.max_eval_rows)
    splits: dict[str, Any] = {"train": view.select(idx["train"])}
    for s in ("eval", "test"):
        splits[s] = list(pools[s].view() if s in pools else view.select(idx[s]))
    return splits


def _write_train(path: Path, rows: Any, rows_dir: Path) -> LazyRows:
    """train.jsonl and the Arrow copy the train split is read from from now on, in one pass."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    spill = Spill(rows_dir / "rows.arrow")
    with tmp.open("w", encoding="utf-8") as f:
        for chunk in batches(rows, 1000):
            for r in chunk:
                r.pop(ORIGIN, None)
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            spill.add(chunk)
    tmp.replace(path)  # readers never see a half-written file
    return LazyRows(spill.close())


def _group_keys(rows: Rows, key: str) -> list[str]:
    """data.split.group_by value per row: a canonical field, else the user's raw column."""
    out = []
    for r in rows:
        raw = r[ORIGIN][2]
        value = r[key] if key in r else raw.get(key) if isinstance(raw, dict) else None
        if value is None or isinstance(value, (dict, list)):
            file, line, _ = r[ORIGIN]
            raise UserError(
                f"{file} line/row {line}: data.split.group_by is '{key}' but the row has no "
                f"string or number in that column (columns: {', '.join(raw or {})}); name a "
                "column every row has (e.g. title for SQuAD articles) or unset it"
            )
        out.append(str(value))
    return out


def _labels(
    cfg: Config, splits: dict[str, Rows], rejects: list[Reject], warnings: list[str]
) -> list[str]:
    """Label order (config, else natural order of train labels); drop eval/test labels
    that train lacks, since a classifier head built from train cannot predict them."""
    given = cfg.data.labels
    labels = list(given) if given else natural_labels(r["label"] for r in splits["train"])
    if not given:
        for s in ("eval", "test"):
            for r in splits[s]:
                if r["label"] not in labels:
                    reason = (
                        f"label '{r['label']}' does not occur in train "
                        f"(train labels: {', '.join(labels)})"
                    )
                    rejects.append(reject_row(r, reason, "validate", "label not in train"))
                    rejects[-1].split = s
            splits[s] = [r for r in splits[s] if r["label"] in labels]
    present = {r["label"] for r in splits["train"]}
    missing = [lab for lab in labels if lab not in present]
    if missing:
        warnings.append(f"labels with no train rows: {', '.join(missing)}")
    if len(present) < 2:
        warnings.append("train has fewer than two labels: a classifier cannot learn from it")
    return labels


def _merged_label_forms(splits: dict[str, Rows], column: str, warnings: list[str]) -> None:
    """Warn when one label was written in several ways (1 and "1", 1 and 1.0, " a" and "a"):
    they are one label now, which is usually right but must not happen unseen."""
    forms: dict[str, Counter[str]] = {}
    for rows in splits.values():
        for r in rows:
            raw = r[ORIGIN][2]
            value = raw.get(column) if isinstance(raw, dict) else None
            if value is not None:
                forms.setdefault(r["label"], Counter())[json.dumps(value, ensure_ascii=False)] += 1
    for label, seen in forms.items():
        if len(seen) > 1:
            ways = " and ".join(f"{form} ({n} rows)" for form, n in seen.most_common(4))
            warnings.append(
                f"label '{label}' is written as {ways} in the input; they were merged into "
                f"one label '{label}' (labels are compared as text)"
            )


def _check_rejected_fractions(
    cfg: Config, inputs: list[dict[str, Any]], rejects: list[Reject], out_dir: Path
) -> None:
    """Count rejects made after row validation (an eval/test label that train lacks) where
    they happened, and apply data.max_bad_fraction per input file and split again."""
    late: dict[int, list[Reject]] = {}
    for r in rejects:
        if r.stage != "validate" or r.kind != "label not in train":
            continue
        same_file = [i for i, e in enumerate(inputs) if e["file"] == r.file]
        exact = [i for i in same_file if inputs[i]["split"] == r.split]
        if exact or same_file:
            late.setdefault((exact or same_file)[0], []).append(r)
    problems = []
    for i, mine in late.items():
        entry = inputs[i]
        entry["rows_rejected"] += len(mine)
        early = [
            r
            for r in rejects
            if r.file == entry["file"] and r.stage == "validate" and r.kind != "label not in train"
        ]
        msg = bad_fraction_message(
            entry["file"],
            entry["rows_read"],
            early + mine,
            cfg.data.max_bad_fraction,
            out_dir / "rejects.jsonl",
        )
        if msg:
            problems.append(f"{msg} ({entry['split']} split)")
    if problems:
        _write_jsonl(out_dir / "rejects.jsonl", [r.to_json() for r in rejects])
        raise UserError("\n".join(problems))


def prepare_data(
    cfg: Config,
    out_dir: Path,
    length_fn: Callable[[dict], int] | None = None,
    say: Callable[[str], None] | None = print,
) -> PreparedData:
    """Read, validate, clean, dedupe, split, check leakage and balance the configured data.

    Writes out_dir/data/{train,eval,test}.jsonl, out_dir/rejects.jsonl and
    out_dir/data_report.{json,md}. length_fn (row -> tokens) adds token length statistics.
    Raises UserError for unreadable inputs, unclear formats, too many invalid rows, and
    when no training rows are left. `say` gets one console line per stage that dropped or
    changed rows (None: silent, e.g. on the other ranks of a distributed run).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gone = remove_leftover_work(out_dir)
    if gone and say:
        say(f"prepare: removed {len(gone)} work folder(s) a killed run left: {', '.join(gone)}")
    # Spill files live beside the run while prepare works; the train rows' Arrow file for
    # as long as this process may read them.
    work = work_dir(out_dir, "prepare")
    rows_dir = work_dir(out_dir, "train-rows")
    atexit.register(remove_dir, rows_dir)
    try:
        return _prepare(cfg, out_dir, work, rows_dir, length_fn, say)
    finally:
        remove_dir(work)


def _prepare(
    cfg: Config,
    out_dir: Path,
    work: Path,
    rows_dir: Path,
    length_fn: Callable[[dict], int] | None,
    say: Callable[[str], None] | None,
) -> PreparedData:
    d = cfg.data
    opened = _open_all(cfg)
    columns = columns_of(r.data for _, head, _ in opened["train"] for r in head)
    mapping = resolve_mapping(columns, d.columns)
    fmt = detect_format(columns, mapping, cfg.task, d.format, ", ".join(as_paths(d.train)))
    check_balance_config(cfg, fmt, mapping)

    cleaner = RowCleaner(d.clean)
    pools, rejects, inputs = _read_pools(cfg, fmt, opened, cleaner, out_dir, work)
    del opened
    splits = _split(cfg, fmt, pools)
    warnings: list[str] = []
    labels = _labels(cfg, splits, rejects, warnings) if fmt in LABELLED else None
    if labels is not None:
        _merged_label_forms(splits, mapping.get("label", "label"), warnings)
    _check_rejected_fractions(cfg, inputs, rejects, out_dir)
    leakage = cp.check_leakage(cfg, fmt, splits, rejects)
    if d.balance.strategy in ("undersample", "oversample"):  # resampling needs the rows
        splits["train"] = list(splits["train"])
    balance, added = balance_train(cfg, splits, rejects, group_column(cfg, mapping))
    weights = None
    if labels is not None and (
        cfg.train.class_weights == "balanced" or d.balance.strategy == "loss_weights"
    ):
        weights = class_weights([r["label"] for r in splits["train"]], labels)
    if not splits["eval"]:
        warnings.append(
            "no eval rows (data.split.eval is 0 and no data.eval file): best-checkpoint "
            "selection and early stopping have nothing to measure"
        )
    if not splits["test"]:
        splits.pop("test")
    splits["train"] = _write_train(out_dir / "data" / "train.jsonl", splits["train"], rows_dir)
    for s in ("eval", "test"):
        if s in splits:
            _strip(splits[s])

    splits_from = {
        s: "file" if s in pools else "train" if getattr(d.split, s) > 0 else "none"
        for s in ("eval", "test")
    }
    report = build_report(
        fmt=fmt,
        cfg_summary={"task": cfg.task, "seed": cfg.run.seed, "splits_from": splits_from},
        inputs=inputs,
        splits=splits,
        rejects=rejects,
        redactions=cleaner.redactions() if "redact" in (d.clean.pii, d.clean.secrets) else {},
        pii=cleaner.detections(),
        changed_rows=cleaner.changed_rows,
        labels=labels,
        label_weights=weights,
        leakage=leakage,
        balance=balance,
        rows_added=added,
        warnings=warnings,
        length_fn=length_fn,
    )
    for s in ("eval", "test"):
        path = out_dir / "data" / f"{s}.jsonl"
        if s in splits:
            _write_jsonl(path, splits[s])
        else:
            path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    _write_jsonl(out_dir / "rejects.jsonl", [r.to_json() for r in rejects])
    (out_dir / "data_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "data_report.md").write_text(to_markdown(report), encoding="utf-8")
    if say is not None:
        for line in console_lines(report, out_dir):
            say(line)
    if not len(splits["train"]):
        raise UserError(
            f"no training rows left after cleaning ({report['drops']['total']} dropped); see "
            f"{out_dir / 'data_report.md'} and {out_dir / 'rejects.jsonl'}"
        )
    return PreparedData(fmt, splits, labels, weights, report)


def read_rows(
    path: str | Path, cfg: Config, *, labels_optional: bool = False, split: str = "eval"
) -> tuple[list[dict], list[dict]]:
    """Canonical rows and rejects (rejects.jsonl objects) for one user file (eval/predict).

    Reads, validates and normalises like prepare_data (unicode, whitespace, control
    characters) but does not redact, dedupe or length-filter: every valid row is scored.
    labels_optional=True accepts labelled formats without a label (predict inputs); `split`
    picks the split of a saved DatasetDict. UserError above data.max_bad_fraction.
    """
    path = str(path)
    recs = read_file(path, split, cfg.data.limit, cfg.data.encoding)
    require_rows(path, recs)
    columns = columns_of(r.data for r in recs)
    mapping = resolve_mapping(columns, cfg.data.columns)
    fmt = detect_format(columns, mapping, cfg.task, cfg.data.format, path, labels_optional)
    # Carry the group column when the file has it (bias evaluation); never require it here.
    group = group_column(cfg, mapping)
    schema = Schema(fmt, mapping, group if group in columns else None, labels_optional)
    rows, rejects = validate_records(recs, schema, cfg.data.labels)
    msg = bad_fraction_message(path, len(recs), rejects, cfg.data.max_bad_fraction, None)
    if msg:
        raise UserError(msg)
    cleaner = RowCleaner(cfg.data.clean, redact=False)
    if fmt in PREFERENCE:
        rows = drop_ties(rows, rejects, cfg.preference.ties == "keep")
    kept = []
    for row in rows:
        try:
            cleaner(row, fmt)
        except RowError as e:
            rejects.append(reject_row(row, e, "clean"))
            continue
        kept.append(row)
    return _strip(kept), [r.to_json() for r in rejects]
