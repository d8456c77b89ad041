"""ORPO (Hong et al. 2024): chosen-response NLL plus an odds-ratio preference term, no reference.

odds(y|x) = p / (1 - p) with p the length-normalised (per-token average) probability of the
response. The per-pair loss is  -avg_logp(chosen) - lambda * log sigmoid(log odds ratio).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LN_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(x < _LN_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds_ratio(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor
) -> torch.Tensor:
    """log(odds(chosen) / odds(rejected)) from per-token average log-probs."""
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    # A probability of exactly 1 makes the odds infinite; keep the log finite.
    c, r = c.clamp(max=-1e-6), r.clamp(max=-1e-6)
    return (c - r) - (log1mexp(c) - log1mexp(r))


def odds_ratio_term(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor
) -> torch.Tensor:
    """log sigmoid(log odds ratio) per pair (the quantity ORPO maximises; TRL's `ratio`)."""
    return F.logsigmoid(log_odds_ratio(chosen_avg_logps, rejected_avg_logps))


def orpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, lam: float
) -> torch.Tensor:
    """Per-pair ORPO loss: NLL of the chosen response (per token) - lam * log sigmoid(log OR)."""
    nll = -chosen_avg_logps.float()
    return nll - lam * odds_ratio_term(chosen_avg_logps, rejected_avg_logps)
