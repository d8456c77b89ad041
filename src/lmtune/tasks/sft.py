"""Supervised fine-tuning of a causal LM on text, instruction or chat rows.

Loss only on response tokens (templates.py builds the label mask), summed over tokens so the
loop can normalise by the token count of the whole optimizer step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmtune.evaluate.metrics import perplexity
from lmtune.tasks.base import Task, TaskInputs


class SFTTask(Task):
    """Causal-LM next-token loss with prompt masking and optional packing."""

    shards_eval = True  # eval_partial/eval_merge: exact over processes

    name = "sft"

    def __init__(
        self,
        tokenizer: Any,
        fmt: str,
        max_length: int,
        template: str = "auto",
        packing: bool = False,
    ) -> None:
        self.tokenizer, self.fmt, self.max_length = tokenizer, fmt, max_length
        self.template, self.packing = template, packing

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: Any, inputs: TaskInputs) -> SFTTask:
        """The row format is the one data preparation detected (or the saved model's)."""
        return cls(
            tokenizer,
            inputs.format or "text",
            cfg.model.max_length,
            cfg.data.template,
            cfg.data.packing,
        )

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """input_ids + labels (-100 outside responses); ValueError when no response fits."""
        from lmtune.data.templates import encode_sft_row

        return encode_sft_row(row, self.fmt, self.tokenizer, self.max_length, self.template)

    def encode_batch(self, rows: list[dict[str, Any]]) -> list[Any]:
        """encode over many rows with one batched tokenizer call (the same features)."""
        from lmtune.data.templates import encode_sft_rows

        return encode_sft_rows(rows, self.fmt, self.tokenizer, self.max_length, self.template)

    def prepare_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pack short examples into full-length sequences when packing is on (training only)."""
        if not self.packing:
            return features
        from lmtune.data.collate import pack_features

        packed = pack_features(features, self.max_length)
        for p in packed:
            p["length"] = len(p["input_ids"])
        return packed

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad (or pack with a block-diagonal mask) and count the tokens that carry loss."""
        from lmtune.data.collate import check_labels, collate_packed, pad_batch

        pad_id = self.tokenizer.pad_token_id
        batch: dict[str, Any]
        if features and "seq_lens" in features[0]:
            batch = {
                **collate_packed(features, pad_id),
                "num_tokens": int(sum(len(f["input_ids"]) for f in features)),
                "num_examples": int(sum(len(f["seq_lens"]) for f in features)),
            }
        else:
            padded = pad_batch(features, pad_id, keys=("input_ids", "labels", "attention_mask"))
            batch = {
                **padded,
                "num_tokens": int(padded["attention_mask"].sum()),
                "num_examples": len(features),
            }
        check_labels(batch)
        batch["num_units"] = int((batch["labels"][:, 1:] != -100).sum())
        return batch

    def token_losses(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token NLL, predictions and targets at the positions that carry loss."""
        from lmtune.models.lm_head import target_logps

        inputs: dict[str, torch.Tensor] = {
            k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch
        }
        # The vocabulary projection only where the loss is, in recomputed chunks: prompt and
        # padding positions never reach the LM head, and no [tokens, vocab] tensor is kept.
        logp, pred, tgt, _ = target_logps(model, inputs, batch["labels"])
        return -logp, pred, tgt

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL over response tokens, and the token count."""
        nll, _, _ = self.token_losses(model, batch)
        return nll.sum(), torch.tensor(float(nll.numel()))

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, float]:
        """Token-weighted loss, perplexity and next-token accuracy on the response tokens."""
        return self.eval_merge([self.eval_partial(model, rows, batch_size)], rows)

    def eval_partial(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> dict[str, float]:
        """Sums and counts over rows (a share of an evaluation, runtime/sharded_eval.py)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        feats = []
        for r in rows:
            try:
                feats.append(self.encode(r))
            except ValueError:
                continue  # the data step already rejected such rows for training; skip here too
        feats.sort(key=lambda f: f["length"])
        total_nll, total_tok, correct = 0.0, 0, 0
        for i in range(0, len(feats), batch_size):
            batch = self.collate(feats[i : i + batch_size])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            nll, pred, tgt = self.token_losses(model, batch)
            total_nll += float(nll.sum())
            total_tok += nll.numel()
            correct += int((pred == tgt).sum())
        model.train(was_training)
        return {"nll": total_nll, "tokens": total_tok, "correct": correct, "examples": len(feats)}

    def eval_merge(
        self, parts: list[dict[str, float]], rows: list[dict[str, Any]]
    ) -> dict[str, float]:
        """The metrics of the summed parts (every process's share, or one whole evaluation)."""
        total_nll = sum(p["nll"] for p in parts)
        total_tok = sum(p["tokens"] for p in parts)
        correct = sum(p["correct"] for p in parts)
        mean = total_nll / max(total_tok, 1)
        return {
            "eval_loss": mean,
            "perplexity": perplexity(mean),
            "token_accuracy": correct / max(total_tok, 1),
            "eval_tokens": float(total_tok),
            "eval_examples": float(sum(p["examples"] for p in parts)),
        }
