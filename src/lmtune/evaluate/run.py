"""`lmtune eval | predict | generate` on a trained run folder or a saved model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.models.saved import load_for_inference, resolve_model_dir
from lmtune.tasks import causal_tasks, spec
from lmtune.tasks.base import Task

__all__ = ["load_for_inference", "resolve_model_dir", "run_eval", "run_generate", "run_predict"]


def _task_for(meta: dict[str, Any], tokenizer: Any, cfg: Config) -> Task:
    from lmtune.tasks import build_task

    return build_task(meta["task"], tokenizer, cfg, meta.get("labels"), None, meta.get("format"))


def run_eval(
    model_path: str | Path,
    data_path: str | Path,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    baselines: bool = False,
    shots: int | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model on a labelled file; writes eval.json (+ errors.jsonl) and report.html.

    baselines=True also scores the base model zero-/few-shot (`shots` per class) on the same
    rows and writes baselines.json beside eval.json (result["baselines"]).
    """
    from lmtune.data.pipeline import read_rows

    model, tokenizer, meta, cfg = load_for_inference(model_path)
    if baselines and not spec(meta["task"]).labelled:
        raise UserError(
            f"--baselines needs a classification model; {model_path} is a {meta['task']} model"
        )
    if baselines:
        from lmtune.evaluate.baselines import check_label_maps

        check_label_maps(cfg.baselines, meta["labels"])  # a config typo fails before any work
    rows, rejects = read_rows(data_path, cfg)
    if not rows:
        raise UserError(
            f"{data_path}: no usable rows ({len(rejects)} rejected; first: "
            f"{rejects[0]['reason'] if rejects else 'file is empty'})"
        )
    out = Path(out_dir) if out_dir else resolve_model_dir(model_path).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    task = _task_for(meta, tokenizer, cfg)
    with torch.no_grad():
        metrics = task.evaluate(model, rows, batch_size, out)
    result = {
        "model": str(resolve_model_dir(model_path)),
        "data": str(data_path),
        "rows": len(rows),
        "rejected": len(rejects),
        **metrics,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    if rejects:
        with (out / "rejects.jsonl").open("w", encoding="utf-8") as f:
            for r in rejects:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    if baselines:
        from lmtune.evaluate.baselines import read_train_pool, run_baselines

        model_dir = resolve_model_dir(model_path)
        pool = read_train_pool(model_dir.parent / "data" / "train.jsonl", meta["labels"])
        result["baselines"] = run_baselines(
            model_dir,
            cfg,
            rows,
            metrics,
            out,
            pool,
            shots,
            device=next(model.parameters()).device,
            data=str(data_path),
        )
    from lmtune.report import write_eval_report

    write_eval_report(out)  # report.html beside eval.json (warns, never raises)
    result["out_dir"] = str(out)
    return result


def read_texts(path: str | Path, text_field: str = "text") -> list[dict[str, Any]]:
    """Unlabelled inputs for predict/generate: .txt (one per line) or jsonl/json/csv rows."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input file {p} does not exist")
    if p.suffix == ".txt":
        return [
            {"text": line.strip()}
            for line in p.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    from lmtune.data.io import read_file

    return [rec.data for rec in read_file(str(p)) if isinstance(rec.data, dict)]


def read_unlabelled_rows(path: str | Path, cfg: Any, doing: str) -> list[dict[str, Any]]:
    """A file's rows with the same column mapping and validation as training (labels/answers
    may be absent); any rejected row is a UserError naming the first (`doing`: predicted...)."""
    from lmtune.data.pipeline import read_rows

    rows, rejects = read_rows(path, cfg, labels_optional=True)
    if rejects:
        first = rejects[0]
        raise UserError(
            f"{path}: {len(rejects)} row(s) cannot be {doing}, first at line "
            f"{first.get('line')}: {first.get('reason')}"
        )
    return rows


def run_predict(
    model_path: str | Path,
    input_path: str | Path,
    out_path: str | Path | None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Predict for every row of a file with a model whose task predicts (a classifier's labels,
    a qa model's answers); writes predictions jsonl."""
    model, tokenizer, meta, cfg = load_for_inference(model_path)
    task_spec = spec(meta["task"])
    if not task_spec.predicts:
        raise UserError(
            f"predict needs a classification or qa model; {model_path} is a {meta['task']} "
            "model (use `lmtune generate` for causal LMs)"
        )
    if Path(input_path).suffix == ".txt" and task_spec.labelled:
        rows = read_texts(input_path)
    else:
        rows = read_unlabelled_rows(input_path, cfg, "predicted")
    preds = _task_for(meta, tokenizer, cfg).predict_rows(model, rows, batch_size)
    if out_path:
        with Path(out_path).open("w", encoding="utf-8") as f:
            for row in preds:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return preds


def run_generate(
    model_path: str | Path,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Complete prompts with a causal LM, rendered with the template it was trained with."""
    from lmtune.data.templates import generation_prompt_ids
    from lmtune.evaluate.samples import complete

    model, tokenizer, meta, _ = load_for_inference(model_path)
    if not spec(meta["task"]).generates:
        raise UserError(
            f"generate needs a causal LM (task {', '.join(causal_tasks())}); {model_path} is "
            f"a {meta['task']} model"
        )
    torch.manual_seed(seed)
    fmt = meta.get("format", "text")
    outs = []
    for prompt in prompts:
        # The exact prompt ids training used (BOS where the template adds it, never an EOS).
        ids = generation_prompt_ids(
            prompt,
            fmt,
            tokenizer,
            meta.get("template", "auto"),
            bool(meta.get("chat_prompts")),
        )
        outs.append(complete(model, tokenizer, ids, max_new_tokens, temperature, top_p))
    return outs
