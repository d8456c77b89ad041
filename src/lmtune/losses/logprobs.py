"""Per-sequence log-probabilities of response tokens from logits at the response positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(
    logits: torch.Tensor, targets: torch.Tensor, seq_index: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(target) per sequence, number of target tokens per sequence).

    logits [N, V] are the model's logits at the N positions that predict a response token
    (already selected: prompt and padding positions never reach the vocabulary softmax),
    targets [N] those tokens, seq_index [N] the sequence each belongs to. The fp32 upcast
    happens here, on N rows only.
    """
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(num_seqs, dtype=token_logps.dtype, device=token_logps.device)
    counts = torch.zeros(num_seqs, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, seq_index, token_logps)
    counts = counts.index_add(0, seq_index, torch.ones_like(token_logps))
    return sums, counts
