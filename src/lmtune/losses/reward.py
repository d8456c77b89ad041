"""Bradley-Terry loss for reward models: P(chosen > rejected) = sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair loss -log sigmoid(r_chosen - r_rejected - margin).

    margin (optional, per pair) asks the chosen reward to win by at least that much
    (Llama 2's margin loss; TRL RewardTrainer's `margin` column).
    """
    diff = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        diff = diff - margin.to(diff)
    return -F.logsigmoid(diff)
