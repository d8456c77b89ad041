"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization").

Each example is one (prompt, completion) marked desirable or undesirable; no pairs needed.
With r = log pi(y|x) - log pi_ref(y|x) and the reference point z0 = KL(pi || pi_ref),
estimated from MISMATCHED (prompt, completion) pairs of the batch, detached and clamped at 0:

  desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
  undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

exactly as TRL 1.16's KTOTrainer computes it (loss_type "kto"); the batch loss is the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KTOParams:
    """beta (the temperature of the implicit reward) and the weights of the two kinds of rows."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def kl_stats(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """[sum of the mismatched pairs' log-ratios, their count] in float64, detached: what
    processes add up to estimate z0 over the whole batch."""
    diff = (policy_kl_logps - ref_kl_logps).detach().double()
    return torch.stack([diff.sum(), torch.full_like(diff.sum(), diff.numel())])


def kl_reference_point(
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """z0: mean log-ratio of the mismatched pairs, detached (no gradient flows through it) and
    clamped at 0 (a KL is never negative; the estimate can be).

    reduce sums kl_stats over processes (an all-reduce): TRL gathers every process's KL
    estimate and averages them, so z0 is one number for the whole step's batch. Summing the
    sums and counts gives that same number when the processes hold equal shares, and the
    one-process value whatever the shares (2 processes == 1 process)."""
    stats = kl_stats(policy_kl_logps, ref_kl_logps)
    if reduce is not None:
        stats = reduce(stats)
    return (stats[0] / stats[1]).to(policy_kl_logps.dtype).clamp(min=0)


def kto_losses(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    params: KTOParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss, per-example implicit reward beta * r) for summed completion log-probs
    [n] under the policy and the reference; desirable is a bool tensor [n]; kl is z0."""
    logratio = policy_logps - ref_logps
    beta = params.beta
    chosen = params.desirable_weight * (1 - F.sigmoid(beta * (logratio - kl)))
    rejected = params.undesirable_weight * (1 - F.sigmoid(beta * (kl - logratio)))
    return torch.where(desirable, chosen, rejected), beta * logratio.detach()
