"""bench_train.py's Hugging Face side: transformers.Trainer on the same rows, tokenized the
same way, with its best fair settings (see bench_train.py's docstring)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchlib import SEED, common_done, final_loss, read_jsonl, trainer_args, trainer_clock


def _model_and_encode(spec: dict[str, Any], tok: Any) -> tuple[Any, Any, Any]:
    """(model, collator, row encoder) for the workload; the encoder gives None for a row
    lmtune rejects at tokenization."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        set_seed,
    )

    d = spec["data"]
    if spec["workload"] == "classification":
        label2id = {lab: i for i, lab in enumerate(d["labels"])}

        def encode_cls(r: dict[str, Any]) -> dict[str, Any] | None:
            enc = tok(r["text"], truncation=True, max_length=spec["max_length"])
            return {
                **{k: list(v) for k, v in enc.items()},
                "labels": label2id[r["label"]],
                "length": len(enc["input_ids"]),
            }

        set_seed(SEED)  # the head's init draws from the same RNG state as on lmtune's side
        model = AutoModelForSequenceClassification.from_pretrained(
            d["model"],
            dtype=torch.float32,
            num_labels=len(label2id),
            id2label=dict(enumerate(label2id)),
            label2id=label2id,
            ignore_mismatched_sizes=True,
            use_safetensors=True,
        )
        pad = spec.get("hf_pad_multiple")
        return model, DataCollatorWithPadding(tok, pad_to_multiple_of=pad), encode_cls
    from lmtune.data.templates import encode_sft_row

    def encode_sft(r: dict[str, Any]) -> dict[str, Any] | None:
        try:
            f = encode_sft_row(r, "instruction", tok, spec["max_length"], "alpaca")
        except ValueError:
            return None  # lmtune rejects the same rows at tokenization
        return {
            "input_ids": f["input_ids"],
            "attention_mask": [1] * f["length"],
            "labels": f["labels"],
            "length": f["length"],
        }

    model = AutoModelForCausalLM.from_pretrained(
        d["model"], dtype=torch.float32, use_safetensors=True
    )
    collator = DataCollatorForSeq2Seq(
        tok, label_pad_token_id=-100, pad_to_multiple_of=spec.get("hf_pad_multiple")
    )
    return model, collator, encode_sft


def _eval_functions(workload: str) -> tuple[Any, Any]:
    """(preprocess_logits_for_metrics, compute_metrics) measuring what lmtune's eval does."""
    import numpy as np
    import torch

    if workload == "classification":

        def keep_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return logits

        def cls_metrics(p: Any) -> dict[str, float]:
            logits = torch.as_tensor(p.predictions).float()
            gold = torch.as_tensor(p.label_ids).long()
            nll = torch.nn.functional.cross_entropy(logits, gold)
            return {
                "accuracy": float((logits.argmax(-1) == gold).float().mean()),
                "nll": float(nll),
            }

        return keep_logits, cls_metrics

    def per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Per example (nll sum, tokens, correct) over response tokens: token-weighted like
        # lmtune, and no [B, L, vocab] tensor is kept across batches.
        lg, tg = logits[:, :-1], labels[:, 1:]
        keep = tg != -100
        nll = torch.nn.functional.cross_entropy(
            lg.float().transpose(1, 2), tg, ignore_index=-100, reduction="none"
        )
        correct = (lg.argmax(-1) == tg) & keep
        return torch.stack([nll.sum(1), keep.sum(1).float(), correct.sum(1).float()], dim=1)

    def sft_metrics(p: Any) -> dict[str, float]:
        s = np.asarray(p.predictions).sum(0)
        return {"token_accuracy": float(s[2] / max(s[1], 1)), "nll": float(s[0] / max(s[1], 1))}

    return per_example, sft_metrics


def _training_args(spec: dict[str, Any]) -> Any:
    from transformers import TrainingArguments

    out = Path(spec["work"]) / f"hf-{spec['workload']}-{spec['precision']}"
    return TrainingArguments(
        **trainer_args(
            spec,
            out,
            weight_decay=0.01,
            optim=spec.get("hf_optim", "adamw_torch_fused"),
            train_sampling_strategy="group_by_length",
            length_column_name="length",
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=1,
            remove_unused_columns=True,
        )
    )


def child_hf(spec: dict[str, Any], t_proc: float) -> dict[str, Any]:
    """transformers.Trainer on the same rows, tokenized the same way, best fair settings."""
    import datasets
    from transformers import AutoTokenizer, Trainer, set_seed

    w, d = spec["workload"], spec["data"]
    set_seed(SEED)
    tok = AutoTokenizer.from_pretrained(d["model"])
    model, collator, encode = _model_and_encode(spec, tok)
    # Tokenization happens here, before the Trainer, and is not timed (as on lmtune's side).
    feats = [f for f in map(encode, read_jsonl(d["train"])) if f is not None]
    eval_feats = sorted(
        (f for f in map(encode, read_jsonl(d["eval"])) if f is not None),
        key=lambda f: f["length"],
    )
    # Whole batches only, like lmtune's plan: the same number of optimizer updates. (Not
    # dataloader_drop_last: in the Trainer that would also drop the tail of the eval set.)
    feats = feats[: len(feats) // spec["batch_size"] * spec["batch_size"]]
    # Non-pad training tokens: one epoch over whole batches sees every kept feature once.
    train_tokens = sum(f["length"] for f in feats)
    preprocess, metrics = _eval_functions(w)
    marks: dict[str, float] = {}
    args = _training_args(spec)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(feats),
        eval_dataset=datasets.Dataset.from_list(eval_feats).remove_columns("length"),
        data_collator=collator,
        processing_class=tok,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=preprocess,
        callbacks=[trainer_clock(marks)],
    )
    t_call = time.perf_counter()
    out = trainer.train()
    train_call_s = time.perf_counter() - t_call
    steps = out.global_step
    logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    ev = next(
        h for h in reversed(trainer.state.log_history) if any(k.startswith("eval_") for k in h)
    )
    step_s = marks["t1"] - marks["t0"]
    samples = steps * spec["batch_size"]
    settings = ("optim", "train_sampling_strategy", "dataloader_num_workers")
    settings += ("dataloader_pin_memory", "bf16")
    return common_done(
        {
            "side": "hf",
            "steps": steps,
            "samples": samples,
            "tokens": train_tokens,
            "step_s": round(step_s, 3),
            "samples_per_s": samples / step_s,
            "tokens_per_s": train_tokens / step_s,
            "final_loss": final_loss(logged, steps),
            "eval_s": round(marks["t_eval"] - marks["t1"], 2),
            "eval_accuracy": ev[
                "eval_accuracy" if w == "classification" else "eval_token_accuracy"
            ],
            "eval_loss": ev["eval_nll"],
            "train_call_s": round(train_call_s, 3),
            "settings": {k: getattr(args, k) for k in settings},
        },
        t_proc,
    )
