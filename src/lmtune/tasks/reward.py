"""Bradley-Terry reward model: a sequence-classification head with one output scores a
(prompt, response) pair; the loss pushes score(chosen) above score(rejected).

Encoders (BERT, MiniLM: tokenizers with [CLS]/[SEP]) read the pair as a text pair
([CLS] prompt [SEP] response [SEP]); causal LMs read prompt + response + EOS (their head
scores the last token), tokenized like DPO. Both follow the preference truncation policy:
the prompt keeps its end, responses their start.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtune.data.collate import pad_batch
from lmtune.losses.reward import bradley_terry
from lmtune.tasks.pairs import (
    PairEncoder,
    PairStats,
    PairStatsTask,
    add_pair_fields,
    fit_pair,
)


class RewardTask(PairStatsTask):
    """Pairwise reward modelling; metrics: eval_loss, pairwise_accuracy, mean_margin, reward_chosen/rejected."""

    name = "reward"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        self.tokenizer, self.max_length = tokenizer, cfg.model.max_length
        self.template = cfg.data.template
        self.max_prompt_length = cfg.preference.max_prompt_length
        # Encoders were pre-trained on text pairs; causal LMs on running text.
        self.text_pair = bool(
            getattr(tokenizer, "cls_token", None)
            and getattr(tokenizer, "sep_token", None)
            and hasattr(tokenizer, "backend_tokenizer")
        )
        self.causal = PairEncoder(tokenizer, self.max_length, self.template, self.max_prompt_length)
        self.type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.backend = None
        if self.text_pair:
            from tokenizers import Tokenizer

            # A private copy without the padding/truncation a tokenizer.json may switch on
            # (MiniLM's pads every encode() to 128): this task truncates by its own policy.
            self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.backend.no_padding()
            self.backend.no_truncation()

    def _encode_text_pair(self, row: dict[str, Any]) -> dict[str, Any]:
        from lmtune.data.templates import render_prompt

        prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = render_prompt(prompt, "chat", self.tokenizer, self.template)
        bt = self.backend
        assert bt is not None  # text_pair tokenizers always have their backend copy
        enc = {
            k: bt.encode(row[k] if k != "prompt" else prompt, add_special_tokens=False)
            for k in ("prompt", "chosen", "rejected")
        }
        p, c, r = fit_pair(
            enc["prompt"].ids,
            enc["chosen"].ids,
            enc["rejected"].ids,
            self.max_length,
            self.max_prompt_length,
            reserved=self.tokenizer.num_special_tokens_to_add(pair=True),
        )
        # Cut the Encoding objects to the same sizes, then let the tokenizer add its specials.
        enc["prompt"].truncate(len(p), direction="left")
        feat: dict[str, Any] = {}
        for key, ids in (("chosen", c), ("rejected", r)):
            enc[key].truncate(len(ids))
            full = bt.post_process(enc["prompt"], enc[key], add_special_tokens=True)
            feat[f"{key}_input_ids"] = list(full.ids)
            if self.type_ids:
                feat[f"{key}_token_type_ids"] = list(full.type_ids)
        return feat

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """chosen_/rejected_ input_ids (and token_type_ids) of the scored sequences."""
        if self.text_pair:
            feat = self._encode_text_pair(row)
        else:
            f = self.causal.encode(row)
            feat = {
                "chosen_input_ids": f["prompt_ids"] + f["chosen_ids"],
                "rejected_input_ids": f["prompt_ids"] + f["rejected_ids"],
            }
        feat["length"] = max(len(feat["chosen_input_ids"]), len(feat["rejected_input_ids"]))
        if row.get("margin") is not None:
            feat["margin"] = float(row["margin"])
        if row.get("tie"):
            feat["tie"] = True
        return feat

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Chosen then rejected sequences in one padded batch (one forward)."""
        seqs = [
            {k: f[f"{side}_{k}"] for k in ("input_ids", "token_type_ids") if f"{side}_{k}" in f}
            for side in ("chosen", "rejected")
            for f in features
        ]
        batch: dict[str, Any] = pad_batch(
            seqs, self.tokenizer.pad_token_id, keys=("input_ids", "token_type_ids")
        )
        add_pair_fields(batch, features)
        return batch

    def rewards(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar reward of every sequence in the batch [2B]."""
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
        }
        return model(**inputs).logits[:, 0].float()

    def pair_stats(self, model: torch.nn.Module, batch: dict[str, Any]) -> PairStats:
        """Per-pair Bradley-Terry loss, whether the chosen response scored higher, and margins."""
        n = batch["num_pairs"]
        scores = self.rewards(model, batch)
        chosen, rejected = scores[:n], scores[n:]
        tie = batch.get("tie")
        # A tie has no winner: it counts in the loss, not in the accuracy.
        preferred = chosen > rejected if tie is None else (chosen > rejected)[~tie]
        return {
            "loss": bradley_terry(chosen, rejected, batch["margin"], tie),
            "pairwise_accuracy": preferred,
            "mean_margin": chosen - rejected,
            "reward_chosen": chosen,
            "reward_rejected": rejected,
        }
