"""`lmtune audit` and the audit inside `lmtune train`: which model gets which bias measure.

The measures live in bias.py. Here: load what is audited (an lmtune run or model folder, or a
plain masked/causal LM), pick what applies (CrowS-Pairs for language models, counterfactual
probes for classifiers), say why a measure was skipped instead of faking it, compare with a
"before" model, write audit.json and print tables.

What "before" means: for a causal LM it is the base model it was fine-tuned from (in
training: the model before the first step). For a classifier the starting point is the base
encoder with an untrained head, whose predictions are noise, so no probes are reported for
it; `--before OTHER_RUN` compares two classifiers (e.g. the current production model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import UserError
from lmtune.evaluate.bias import (
    CrowsPair,
    counterfactual_audit,
    crows_scores,
    crows_summary,
    load_terms,
    read_crows,
)
from lmtune.tasks import spec

UNTRAINED_HEAD = (
    "before training a classifier has an untrained head, whose predictions are noise; "
    "probes start after training (compare two runs with `lmtune audit RUN --before OTHER_RUN`)"
)


@dataclass
class Target:
    """A model to audit: kind masked | causal | classifier, or None with the reason."""

    name: str
    kind: str | None
    model: Any = None
    tokenizer: Any = None
    task: Any = None
    cfg: Any = None
    reason: str | None = None
    run_dir: Path | None = None
    base: str | None = None  # a causal run's base model: its default "before"


def load_target(path: str) -> Target:
    """An lmtune run or model folder, or a plain model (folder, hub id, builtin:NAME)."""
    from lmtune.evaluate.run import load_for_inference, resolve_model_dir

    try:
        model_dir = resolve_model_dir(path)
    except UserError:
        return _load_plain(path)
    model, tok, meta, cfg = load_for_inference(model_dir)
    run_dir = model_dir.parent if (model_dir.parent / "config.yaml").is_file() else None
    name, task_name = str(model_dir), meta["task"]
    kind = spec(task_name).audit_kind
    if kind == "classifier":
        from lmtune.tasks import build_task

        task = build_task(task_name, tok, cfg, meta.get("labels"))
        return Target(name, "classifier", model, tok, task, cfg, run_dir=run_dir)
    if kind == "causal":
        return Target(
            name, "causal", model, tok, cfg=cfg, run_dir=run_dir, base=meta.get("base_model")
        )
    return Target(
        name,
        None,
        reason=f"a {task_name} model is neither a language model nor a classifier",
        run_dir=run_dir,
    )


def _load_plain(spec: str) -> Target:
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    from lmtune.config import ModelConfig
    from lmtune.models.load import load_model, resolve_model_path

    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        # The tokenizer as shipped (no pad token added), so the vocabulary is the model's own.
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
            config, "is_decoder", False
        ):
            model, info = AutoModelForMaskedLM.from_pretrained(
                path, output_loading_info=True, dtype=torch.float32, use_safetensors=True
            )
            if info["missing_keys"]:
                lacks = ", ".join(sorted(info["missing_keys"])[:2])
                return Target(
                    spec,
                    None,
                    reason=(
                        f"{spec} has no masked-LM head (its weights lack {lacks}, ...: an encoder saved "
                        "without its pre-training head, as sentence-embedding models are); CrowS-Pairs needs "
                        "a masked LM with its MLM head or a causal LM, and a random head would only add noise"
                    ),
                )
            return Target(spec, "masked", model.eval(), tok)
    except Exception as exc:
        raise UserError(
            f"could not load {spec} for the audit: {type(exc).__name__}: {exc}"
        ) from exc
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return Target(
            spec, "causal", load_model(ModelConfig(name_or_path=spec), "sft", tok).eval(), tok
        )
    return Target(
        spec,
        None,
        reason=f"{spec} is a {config.model_type} model with neither a masked-LM "
        "nor a causal-LM head",
    )


def read_probe_rows(path: str | Path, cfg: Any) -> list[dict[str, Any]]:
    """Texts to probe: .txt lines, or a file read with the run's column mapping (labels optional)."""
    from lmtune.evaluate.run import read_texts, read_unlabelled_rows

    if Path(path).suffix == ".txt":
        return read_texts(path)
    return read_unlabelled_rows(path, cfg, "probed")


def audit_target(
    target: Target,
    pairs: list[CrowsPair] | None,
    rows: list[dict] | None,
    worst: int = 10,
    batch_size: int = 32,
    skip: dict[str, str] | None = None,
) -> dict:
    """Run what applies to target: CrowS-Pairs for LMs, probes for classifiers; say why not."""
    res: dict[str, Any] = {
        "model": target.name,
        "kind": target.kind,
        "crows_pairs": None,
        "counterfactual": None,
        "skipped": dict(skip or {}),
    }
    model, skipped = target.model, res["skipped"]
    was_training = bool(model is not None and model.training)
    if model is not None:
        model.eval()  # dropout off: scores must not be random
    lm = target.kind in ("masked", "causal")
    if "crows_pairs" not in skipped and lm and pairs:
        scores = crows_scores(model, target.tokenizer, target.kind, pairs)
        res["crows_pairs"] = crows_summary(pairs, scores, target.kind)
    elif "crows_pairs" not in skipped:
        skipped["crows_pairs"] = (
            "no CrowS-Pairs file given (--crows or audit.crows)"
            if lm
            else target.reason
            or "a classifier has no language-model head; CrowS-Pairs needs a masked or causal LM"
        )
    if "counterfactual" not in skipped and target.kind == "classifier" and rows:
        res["counterfactual"] = counterfactual_audit(
            rows,
            lambda rs: target.task.predict(model, rs, batch_size),
            target.task.labels,
            load_terms(),
            worst,
        )
        if res["counterfactual"] is None:
            skipped["counterfactual"] = (
                f"none of the {len(rows)} texts mentions a term of bias_terms.json"
            )
    elif "counterfactual" not in skipped:
        skipped["counterfactual"] = (
            "no texts to probe (--data or audit.data, or a run's eval split)"
            if target.kind == "classifier"
            else "counterfactual probes need a classifier (an lmtune classification run)"
        )
    if model is not None:
        model.train(was_training)
    return res


def changes(after: dict, before: dict | None) -> dict[str, float] | None:
    """after minus before for the headline figures both audits have."""
    if not before:
        return None
    out = {}
    if after.get("crows_pairs") and before.get("crows_pairs"):
        out["crows_score"] = (
            after["crows_pairs"]["overall"]["score"] - before["crows_pairs"]["overall"]["score"]
        )
    if after.get("counterfactual") and before.get("counterfactual"):
        a, b = after["counterfactual"]["overall"], before["counterfactual"]["overall"]
        out["flip_rate"] = a["flip_rate"] - b["flip_rate"]
        out["mean_abs_change"] = a["mean_abs_change"] - b["mean_abs_change"]
    return out or None


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_audit(
    model_or_run: str,
    data: str | Path | None = None,
    crows: str | Path | None = None,
    out: str | Path | None = None,
    max_pairs: int | None = None,
    before: str | None = None,
    worst: int = 10,
) -> dict[str, Any]:
    """`lmtune audit`: audit a model (and its before), write OUT/audit.json, return its content."""
    if max_pairs is not None and max_pairs < 1:
        raise UserError(f"--max-pairs must be at least 1 (got {max_pairs})")
    pairs = (
        read_crows(crows, max_pairs) if crows else None
    )  # bad input fails before any model loads
    target = load_target(model_or_run)
    rows = _rows_for(target, data)
    result = audit_target(target, pairs, rows, worst)
    before_spec = before or target.base
    result["before"] = None
    if before_spec:
        try:
            ref = load_target(before_spec)
        except UserError as exc:
            if before:
                raise
            result["skipped"]["before"] = f"could not load the base model {before_spec}: {exc}"
        else:
            result["before"] = audit_target(
                ref, pairs, rows if rows is not None else _rows_for(ref, data), worst
            )
    elif target.kind == "classifier":
        result["skipped"]["before"] = (
            "a classifier's starting point is its base encoder with an untrained head, whose "
            "predictions are noise; pass --before OTHER_CLASSIFIER_RUN to compare two classifiers"
        )
    result["change"] = changes(result, result["before"])
    out_dir = Path(out) if out else (target.run_dir / "audit" if target.run_dir else Path("audit"))
    _write(out_dir / "audit.json", result)
    return {**result, "out_dir": str(out_dir)}


def _rows_for(target: Target, data: str | Path | None) -> list[dict] | None:
    if target.kind != "classifier":
        return None
    if data:
        return read_probe_rows(data, target.cfg)
    held_out = (
        [target.run_dir / "data" / f"{s}.jsonl" for s in ("eval", "test")] if target.run_dir else []
    )
    path = next((p for p in held_out if p.is_file()), None)
    return read_probe_rows(path, target.cfg) if path else None


def audit_in_run(
    cfg: Any,
    stage: str,
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    prepared: Any,
    run_dir: Path,
) -> dict | None:
    """The audit inside `lmtune train` (audit.enabled), stage "before" or "after" training.

    before: written to RUN/audit_before.json (so --resume keeps it); after: RUN/audit.json
    with the before inside and the change; returns the short summary for summary.json.
    """
    a = cfg.audit
    pairs = read_crows(a.crows, a.max_pairs) if a.crows else None
    kind = spec(cfg.task).audit_kind
    reason = None if kind else f"task {cfg.task} trains neither a language model nor a classifier"
    before_path = run_dir / "audit_before.json"
    if stage == "before":
        skip = {"counterfactual": UNTRAINED_HEAD} if kind == "classifier" else None
        target = Target(
            f"{cfg.model.name_or_path} (before training)", kind, model, tokenizer, task, cfg, reason
        )
        _write(before_path, audit_target(target, pairs, None, a.worst, skip=skip))
        return None
    rows = None
    if kind == "classifier":
        rows = (
            read_probe_rows(a.data, cfg)
            if a.data
            else prepared.splits.get("eval") or prepared.splits.get("test")
        )
    target = Target(str(run_dir / "model"), kind, model, tokenizer, task, cfg, reason)
    result = audit_target(target, pairs, rows, a.worst)
    result["before"] = (
        json.loads(before_path.read_text(encoding="utf-8")) if before_path.is_file() else None
    )
    result["change"] = changes(result, result["before"])
    _write(run_dir / "audit.json", result)
    before_path.unlink(missing_ok=True)
    return audit_summary(result)


def audit_summary(result: dict) -> dict[str, Any]:
    """Headline figures of an audit (and of its before) for summary.json."""

    def head(r: dict | None) -> dict[str, Any] | None:
        if not r:
            return None
        out: dict[str, Any] = {}
        if r.get("crows_pairs"):
            o = r["crows_pairs"]["overall"]
            out.update(
                crows_score=o["score"], crows_ci=[o["ci_low"], o["ci_high"]], crows_pairs=o["n"]
            )
        if r.get("counterfactual"):
            o = r["counterfactual"]["overall"]
            out.update(
                flip_rate=o["flip_rate"], mean_abs_change=o["mean_abs_change"], probes=o["n"]
            )
        return out or None

    return {
        "file": "audit.json",
        **(head(result) or {}),
        "before": head(result.get("before")),
        "change": result.get("change"),
    }


def print_audit(result: dict, console: Any, directions: int = 6, worst: int = 5) -> None:
    """Rich tables: CrowS-Pairs by bias type, flip rates by category and direction, worst swaps."""
    from rich.table import Table

    before = result.get("before") or {}
    crows, crows_b = result.get("crows_pairs"), before.get("crows_pairs")
    if crows:
        t = Table(
            "bias type",
            "n",
            "sent_more preferred %",
            "95% CI",
            *(["before %"] if crows_b else []),
            title=f"CrowS-Pairs: {crows['metric']} (ideal 50%)",
        )
        for name, r in [("overall", crows["overall"]), *crows["by_type"].items()]:
            b = (
                (crows_b["overall"] if name == "overall" else crows_b["by_type"].get(name))
                if crows_b
                else None
            )
            t.add_row(
                name,
                str(r["n"]),
                f"{r['score']:.1f}",
                f"{r['ci_low']:.1f}-{r['ci_high']:.1f}",
                *([f"{b['score']:.1f}" if b else "-"] if crows_b else []),
            )
        console.print(t)
    cf, cf_b = result.get("counterfactual"), before.get("counterfactual")
    if cf:
        t = Table(title="counterfactual probes (term swaps)")
        t.add_column("category / direction", no_wrap=True)
        for col in (
            "n",
            "flip rate",
            "95% CI",
            "mean |change|",
            *(["before flip rate"] if cf_b else []),
        ):
            t.add_column(col)
        lines = [("overall", cf["overall"], cf_b["overall"] if cf_b else None)]
        for cat, r in cf["by_category"].items():
            b = cf_b["by_category"].get(cat) if cf_b else None
            lines.append((cat, r, b))
            # Nationality has one direction per pair of countries: show the ones that flip most.
            dirs = sorted(r["by_direction"].items(), key=lambda kv: -kv[1]["flip_rate"])[
                :directions
            ]
            lines += [(f"  {d}", dr, (b or {}).get("by_direction", {}).get(d)) for d, dr in dirs]
        for name, r, b in lines:
            t.add_row(
                name,
                str(r["n"]),
                f"{r['flip_rate']:.3f}",
                f"{r['ci_low']:.3f}-{r['ci_high']:.3f}",
                f"{r['mean_abs_change']:.4f}",
                *([f"{b['flip_rate']:.3f}" if b else "-"] if cf_b else []),
            )
        console.print(t)
        w = Table("category", "prediction", "change", "text -> swapped", title="largest changes")
        for e in cf["worst"][:worst]:
            w.add_row(
                e["category"],
                f"{e['pred']} -> {e['pred_swapped']}",
                f"{e['change']:+.4f}",
                f"{e['text'][:90]}\n{e['swapped'][:90]}",
            )
        console.print(w)
    for who, res in (("", result), ("before: ", before)):
        for section, why in (res.get("skipped") or {}).items():
            console.print(f"{who}{section} skipped: {why}", highlight=False, style="dim")
