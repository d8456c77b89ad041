"""ORPO: SFT on the chosen response plus an odds-ratio preference term, no reference model.

The NLL term is the per-token average over the chosen RESPONSE (the paper's L_SFT; prompt
tokens are never in the loss, as in lmtune's SFT). TRL's ORPOTrainer also counts prompt
tokens in that term; the odds-ratio term is the same as TRL's (tests check both).
"""

from __future__ import annotations

from typing import Any

import torch

from lmtune.losses.orpo import log_odds_ratio, orpo_loss
from lmtune.tasks.pairs import (
    PairEncoder,
    PairStats,
    PairStatsTask,
    collate_pairs,
    response_logps,
)


class ORPOTask(PairStatsTask):
    """Odds-ratio preference optimisation of a causal LM (one forward of chosen + rejected).

    Eval metrics: means of eval_loss, nll, log_odds_ratio, reward_accuracy/margin/chosen/rejected
    and logp_chosen/rejected.
    """

    name = "orpo"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        self.tokenizer = tokenizer
        self.encoder = PairEncoder(
            tokenizer, cfg.model.max_length, cfg.data.template, cfg.preference.max_prompt_length
        )
        self.lam = cfg.preference.orpo_lambda

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """Token ids of the prompt and both responses (see tasks/pairs.py for truncation)."""
        return self.encoder.encode(row)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Chosen and rejected in one padded batch."""
        return collate_pairs(features, self.tokenizer.pad_token_id)

    def pair_stats(self, model: torch.nn.Module, batch: dict[str, Any]) -> PairStats:
        """Per-pair loss, NLL, log odds ratio and TRL-style rewards (lambda * avg log-prob)."""
        n = batch["num_pairs"]
        sums, counts = response_logps(model, batch)
        avg = sums / counts.clamp(min=1)
        avg_c, avg_r = avg[:n], avg[n:]
        chosen, rejected = self.lam * avg_c, self.lam * avg_r
        return {
            "loss": orpo_loss(avg_c, avg_r, self.lam),
            "nll": -avg_c,
            "log_odds_ratio": log_odds_ratio(avg_c, avg_r),
            "reward_accuracy": chosen > rejected,
            "reward_margin": chosen - rejected,
            "reward_chosen": chosen,
            "reward_rejected": rejected,
            "logp_chosen": sums[:n],
            "logp_rejected": sums[n:],
        }
