"""Bradley-Terry loss for reward models: P(chosen > rejected) = sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss -log sigmoid(r_chosen - r_rejected - margin).

    margin (optional, per pair) asks the chosen reward to win by at least that much
    (Llama 2's margin loss; TRL RewardTrainer's `margin` column). tie (optional, bool per
    pair) marks pairs rated equal: their target is P(chosen > rejected) = 0.5, i.e. the
    cross-entropy -(log sigmoid(d) + log sigmoid(-d)) / 2, smallest at equal rewards.
    """
    diff = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        diff = diff - margin.to(diff)
    loss = -F.logsigmoid(diff)
    if tie is not None:
        raw = chosen_rewards.float() - rejected_rewards.float()  # no margin between equals
        loss = torch.where(tie.to(torch.bool), -(F.logsigmoid(raw) + F.logsigmoid(-raw)) / 2, loss)
    return loss
