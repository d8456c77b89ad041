"""Zero-shot and few-shot baselines of a run's base model, beside the fine-tuned model.

A fine-tuned accuracy means little without what the base model does untrained:
- encoders (builtin:minilm, BERT-like): mean-pooled, L2-normalised embeddings (what
  sentence-transformers does for all-MiniLM-L6-v2). Zero-shot: cosine similarity to label
  descriptions; few-shot: nearest class centroid of k embedded train rows per class.
- causal LMs: in-context prompting. The prompt (k demonstrations per class, then the row)
  is followed by each label's words; the label whose continuation is most likely wins.
  Scoring is the mean token log-probability by default: a sum favours labels that are
  fewer tokens long, whatever the text says (baselines.scoring: sum is kept for
  single-token label words, where both agree).
Few-shot results depend on which k rows were drawn, so they are repeated over several
seeds and reported as mean and (sample) standard deviation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmtune.config import BaselinesConfig, Config, ModelConfig
from lmtune.errors import UserError
from lmtune.evaluate.baselines_causal import (  # noqa: F401 - importable from here too
    candidates,
    causal_baselines,
    causal_predictions,
    continuation_logprobs,
    fit_demos,
    render,
)
from lmtune.evaluate.baselines_math import (  # noqa: F401
    Rows,
    class_prototypes,
    draw_shots,
    l2_normalize,
    label_scores,
    mean_pool,
    metric_row,
    nearest_prototype,
    sample_shots,
)
from lmtune.tasks import TASKS

BASELINES_FILE = "baselines.json"


# ----------------------------------------------------------------------------- loading


def base_kind(model_config: Any) -> str:
    """'encoder' or 'causal' for a transformers config (same rule as the task check in load.py)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(model_config, "model_type", "?")
    if getattr(model_config, "is_encoder_decoder", False):
        raise UserError(f"baselines support encoders and causal LMs, not the encoder-decoder {mt}")
    # BERT-likes are registered as causal LMs too (BertLMHeadModel) but were never trained so.
    encoder = mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        model_config, "is_decoder", False
    )
    causal = mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (
        getattr(model_config, "auto_map", None) or {}
    )
    return "causal" if causal and not encoder else "encoder"


def load_base(meta: dict[str, Any], cfg: Config) -> tuple[torch.nn.Module, Any, str]:
    """The run's base model (not the fine-tune), its tokenizer and kind; safetensors only."""
    from transformers import AutoConfig, AutoModel

    from lmtune.models.load import load_model, load_tokenizer, resolve_model_path

    mcfg = ModelConfig(
        name_or_path=meta["base_model"],
        revision=meta.get("base_revision"),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    path = resolve_model_path(mcfg.name_or_path)
    hub = {} if Path(path).is_dir() or not mcfg.revision else {"revision": mcfg.revision}
    kw = {"trust_remote_code": mcfg.trust_remote_code, **hub}
    tokenizer = load_tokenizer(mcfg, for_training=False)
    try:
        kind = base_kind(AutoConfig.from_pretrained(path, **kw))
        if kind == "causal":
            return load_model(mcfg, "sft", tokenizer).eval(), tokenizer, kind
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True, **kw)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"baselines: could not load the base model {meta['base_model']} "
            f"({type(exc).__name__}: {exc}); it must be reachable as when training"
        ) from exc
    return model.eval(), tokenizer, kind


# ----------------------------------------------------------------------------- encoders


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Rows,
    max_length: int,
    batch_size: int,
    device: Any = "cpu",
) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings [n, H] of rows' text (and text_pair), in row order."""
    order = sorted(
        range(len(rows)), key=lambda i: len(rows[i]["text"]) + len(rows[i].get("text_pair") or "")
    )
    out = torch.empty(len(rows), model.config.hidden_size)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        pairs = [rows[j].get("text_pair") for j in idx]
        enc = tokenizer(
            [rows[j]["text"] for j in idx],
            pairs if all(p is not None for p in pairs) else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model(**enc).last_hidden_state
        out[idx] = l2_normalize(mean_pool(hidden, enc["attention_mask"])).cpu()
    return out


def label_descriptions(bcfg: BaselinesConfig, labels: list[str]) -> dict[str, list[str]]:
    """Descriptions per label from the config (or the template); UserError on unknown/missing labels."""
    given = bcfg.label_descriptions
    if not given:
        return {lab: [bcfg.description_template.replace("{label}", lab)] for lab in labels}
    _check_keys("baselines.label_descriptions", given, labels, "baselines.description_template")
    out = {lab: [given[lab]] if isinstance(given[lab], str) else list(given[lab]) for lab in labels}
    empty = [lab for lab, d in out.items() if not d or not all(s.strip() for s in d)]
    if empty:
        raise UserError(
            f"baselines.label_descriptions: empty description for label(s) {', '.join(empty)}"
        )
    return out


def check_label_maps(bcfg: BaselinesConfig, labels: list[str]) -> None:
    """UserError when label_descriptions or label_words name other labels than the run's.

    Called before any expensive work (training, evaluation) so a typo costs seconds.
    """
    label_descriptions(bcfg, labels)
    if bcfg.label_words:
        _check_keys("baselines.label_words", bcfg.label_words, labels, "the label names")


def _check_keys(key: str, given: dict[str, Any], labels: list[str], fallback: str) -> None:
    unknown = [k for k in given if k not in labels]
    missing = [lab for lab in labels if lab not in given]
    if unknown or missing:
        raise UserError(
            f"{key} in the run config: "
            + (f"label(s) {', '.join(unknown)} are not labels of this run; " if unknown else "")
            + (f"no entry for label(s) {', '.join(missing)}; " if missing else "")
            + f"give exactly one entry per label ({', '.join(labels)}), or leave it empty to use {fallback}"
        )


def encoder_baselines(
    model: torch.nn.Module,
    tokenizer: Any,
    bcfg: BaselinesConfig,
    labels: list[str],
    eval_rows: Rows,
    train_rows: Rows | None,
    k: int,
    seed: int,
    max_length: int,
    device: Any,
    notes: list[str],
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Zero-shot (label-description similarity) and few-shot (nearest centroid) rows."""
    descs = label_descriptions(bcfg, labels)
    gold = [labels.index(r["label"]) for r in eval_rows]
    x = embed(model, tokenizer, eval_rows, max_length, bcfg.batch_size, device)
    flat = [(i, d) for i, lab in enumerate(labels) for d in descs[lab]]
    d_emb = embed(
        model, tokenizer, [{"text": d} for _, d in flat], max_length, bcfg.batch_size, device
    )
    # Several descriptions of one label average into one prototype, like a centroid.
    zero = nearest_prototype(x, class_prototypes(d_emb, [i for i, _ in flat], len(labels)))
    rows = [metric_row("zero-shot", 0, gold, [zero.tolist()], labels)]
    if train_rows:
        preds = []
        for s in range(bcfg.seeds):
            shots = draw_shots(train_rows, labels, k, seed + s, notes if s == 0 else None)
            s_emb = embed(model, tokenizer, shots, max_length, bcfg.batch_size, device)
            protos = class_prototypes(s_emb, [labels.index(r["label"]) for r in shots], len(labels))
            preds.append(nearest_prototype(x, protos).tolist())
        rows.append(metric_row("few-shot", k, gold, preds, labels))
    return rows, descs


# ----------------------------------------------------------------------------- entry points


def read_train_pool(path: Path, labels: list[str]) -> Rows | None:
    """A run's prepared train split (data/train.jsonl) for drawing shots; None when absent."""
    if not path.is_file():
        return None
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return [r for r in rows if isinstance(r, dict) and r.get("text") and r.get("label") in labels]


def run_baselines(
    model_dir: Path,
    cfg: Config,
    eval_rows: Rows,
    finetuned: dict[str, Any],
    out_dir: Path | None,
    train_rows: Rows | None,
    shots: int | None = None,
    device: Any = "cpu",
    data: str | None = None,
) -> dict[str, Any]:
    """Zero-shot, few-shot and fine-tuned rows on eval_rows; writes out_dir/baselines.json.

    model_dir is the saved fine-tuned model (its lmtune_model.json names the base model and
    the labels); finetuned holds its metrics on the same rows; data says what the rows are
    (a file, or a split of the run). Few-shot is skipped, with a note, when there is no
    training pool to draw shots from.
    """
    from lmtune.models.export import read_meta

    meta = read_meta(Path(model_dir))
    if not (meta.get("task") in TASKS and TASKS[meta["task"]].labelled):
        raise UserError(
            f"baselines need a classification model; {model_dir} is a {meta.get('task')} model"
        )
    labels = list(meta["labels"])
    bcfg, k = cfg.baselines, shots or cfg.baselines.shots
    check_label_maps(bcfg, labels)
    if k < 1:
        raise UserError(f"--shots must be at least 1, got {k}")
    notes: list[str] = []
    if not train_rows:
        notes.append(
            "few-shot skipped: no training rows to draw shots from (the run folder has no "
            "data/train.jsonl)"
        )
    model, tokenizer, kind = load_base(meta, cfg)
    model.to(device)
    args = (
        model,
        tokenizer,
        bcfg,
        labels,
        eval_rows,
        train_rows,
        k,
        cfg.run.seed,
        int(meta.get("max_length") or cfg.model.max_length),
        device,
        notes,
    )
    if kind == "encoder":
        rows, descs = encoder_baselines(*args)
        words = None
    else:
        rows, words = causal_baselines(*args)
        descs = None
    rows.append(
        {
            "method": "fine-tuned",
            "k": None,
            "accuracy": float(finetuned["accuracy"]),
            "macro_f1": float(finetuned["macro_f1"]),
        }
    )
    report = {
        "metric": "accuracy",
        "rows": rows,
        "base_model": meta["base_model"],
        "base_kind": kind,
        "data": data,
        "eval_rows": len(eval_rows),
        "label_descriptions": descs,
        "prompt": bcfg.prompt if kind == "causal" else None,
        "label_words": words,
        "scoring": bcfg.scoring if kind == "causal" else "cosine",
        "notes": notes,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / BASELINES_FILE).write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return report


def baselines_table(report: dict[str, Any]) -> Any:
    """A rich table of baselines.json: zero-shot, few-shot and fine-tuned side by side."""
    from rich.table import Table

    table = Table(
        "method",
        "k",
        "accuracy",
        "macro F1",
        "seeds",
        title=f"baselines of {report['base_model']} ({report['base_kind']})",
    )
    for r in report["rows"]:
        std = f" ± {r['accuracy_std']:.4f}" if "accuracy_std" in r else ""
        f1_std = f" ± {r['macro_f1_std']:.4f}" if "macro_f1_std" in r else ""
        table.add_row(
            r["method"],
            "-" if r["k"] is None else str(r["k"]),
            f"{r['accuracy']:.4f}{std}",
            f"{r['macro_f1']:.4f}{f1_std}",
            str(r.get("seeds", "-")),
        )
    return table
