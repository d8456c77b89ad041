"""DPO-family losses on per-sequence log-probabilities, picked by name from DPO_LOSSES.

Every loss takes the same PairLogps (summed response log-probs of policy and reference, and
response token counts) and LossParams, and returns one loss per pair; the task sums them and
the training loop divides by the number of pairs in the optimizer step.

  sigmoid  DPO (Rafailov et al. 2023); label_smoothing e gives conservative DPO:
           -(1-e) log s(b*d) - e log s(-b*d),   d = (pi_c - ref_c) - (pi_r - ref_r)
  robust   rDPO (Chowdhury et al. 2024): ((1-e)(-log s(b*d)) + e log s(-b*d)) / (1 - 2e)
  ipo      IPO (Azar et al. 2023) on per-token averages, as TRL:  (d_avg - 1/(2b))^2
  hinge    SLiC-style hinge: max(0, 1 - b*d)
  simpo    SimPO (Meng et al. 2024), no reference: x = b*(avg_c - avg_r) - gamma,
           -(1-e) log s(x) - e log s(-x)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """Summed log-probs of the chosen/rejected responses under the policy and the reference.

    ref_* are ignored by reference-free losses (simpo) and may be zeros there. *_tokens are
    the response token counts, for the length-normalised losses (ipo, simpo).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def delta(self) -> torch.Tensor:
        """Policy log-ratio of chosen over rejected, minus the reference's."""
        return (self.chosen - self.ref_chosen) - (self.rejected - self.ref_rejected)


@dataclass(frozen=True)
class LossParams:
    """Hyperparameters shared by the DPO family (preference.* in the config)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5


def _smoothed(x: torch.Tensor, eps: float) -> torch.Tensor:
    # The label is flipped with probability eps: expected logistic loss over both labels.
    return -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)


def dpo_sigmoid(s: PairLogps, p: LossParams) -> torch.Tensor:
    """DPO's logistic loss (conservative DPO when label_smoothing > 0)."""
    return _smoothed(p.beta * s.delta(), p.label_smoothing)


def dpo_robust(s: PairLogps, p: LossParams) -> torch.Tensor:
    """rDPO: an unbiased loss under label flips with probability label_smoothing (< 0.5)."""
    x, eps = p.beta * s.delta(), p.label_smoothing
    return (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)


def dpo_ipo(s: PairLogps, p: LossParams) -> torch.Tensor:
    """IPO's squared loss on per-token log-ratios (beta is IPO's tau)."""
    chosen = (s.chosen - s.ref_chosen) / s.chosen_tokens.clamp(min=1)
    rejected = (s.rejected - s.ref_rejected) / s.rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1 / (2 * p.beta)) ** 2


def dpo_hinge(s: PairLogps, p: LossParams) -> torch.Tensor:
    """Hinge loss on the scaled log-ratio difference."""
    return torch.relu(1 - p.beta * s.delta())


def simpo(s: PairLogps, p: LossParams) -> torch.Tensor:
    """SimPO: length-normalised log-probs with a target margin gamma, no reference model."""
    avg_c = s.chosen / s.chosen_tokens.clamp(min=1)
    avg_r = s.rejected / s.rejected_tokens.clamp(min=1)
    return _smoothed(p.beta * (avg_c - avg_r) - p.simpo_gamma, p.label_smoothing)


DPO_LOSSES: dict[str, Callable[[PairLogps, LossParams], torch.Tensor]] = {
    "sigmoid": dpo_sigmoid,
    "robust": dpo_robust,
    "ipo": dpo_ipo,
    "hinge": dpo_hinge,
    "simpo": simpo,
}
REFERENCE_FREE = frozenset({"simpo"})


def implicit_rewards(s: PairLogps, p: LossParams, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards the loss implies, for metrics: beta * log-ratio to the
    reference (DPO family), or beta * per-token log-prob (simpo, which has no reference)."""
    if loss in REFERENCE_FREE:
        return (
            p.beta * s.chosen / s.chosen_tokens.clamp(min=1),
            p.beta * s.rejected / s.rejected_tokens.clamp(min=1),
        )
    return p.beta * (s.chosen - s.ref_chosen), p.beta * (s.rejected - s.ref_rejected)
