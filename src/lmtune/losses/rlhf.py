"""Online RL losses on sampled completions: group-relative advantages, KL estimators, the
clipped policy-gradient loss and how per-token losses become one loss per completion.

Shapes: rewards [P, k] (k completions of each of P prompts); per-token tensors [N, T] (N = P*k
completions, T = longest completion), with mask [N, T] true on completion tokens.

  advantages  rloo  A_i = r_i - mean_{j != i} r_j           (Ahmadian et al. 2024, RLOO)
              grpo  A_i = (r_i - mean_j r_j) / (std_j r_j + eps)   (Shao et al. 2024, GRPO)
  KL          per token, x = logp_ref - logp_policy at a token sampled from the policy:
              k1 = -x   k2 = x^2 / 2   k3 = exp(x) - x - 1   (Schulman 2020, "Approximating
              KL divergence"); k1 summed over a completion is the unbiased sequence KL (what
              goes into the reward), k3 is the low-variance, always-positive per-token one
              (what GRPO adds to the loss).
  policy      ratio = exp(logp - logp_old); loss = -min(ratio * A, clip(ratio, 1-e, 1+e) * A)
              (PPO, Schulman et al. 2017), per token, A broadcast over the completion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EPS = 1e-4  # GRPO's std floor: a group whose k rewards are equal gets zero advantages


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: each reward minus the mean of the other k-1 of its group."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 completions per prompt")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Reward minus the group mean, over the group's (unbiased) standard deviation."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


ADVANTAGES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rloo": rloo_advantages,
    "grpo": grpo_advantages,
}


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log pi - log ref: unbiased, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(log pi - log ref)^2 / 2: biased, low variance, never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(x) - x - 1 with x = log ref - log pi: unbiased and never negative (GRPO's)."""
    x = ref_logp - logp
    return torch.exp(x) - x - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(pi || ref) over the whole vocabulary at each position: [..., V] -> [...].

    Valid along any trajectory (greedy ones too), unlike the sampled estimators above.
    """
    logp = torch.log_softmax(logits.float(), -1)
    ref = torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref)).sum(-1)


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token PPO-clip loss [N, T], whether the clip was active [N, T]).

    advantages are per completion [N]; old_logp come from sampling time (no gradient).
    """
    adv = advantages[:, None].to(logp)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv
    return -torch.min(unclipped, clipped), clipped < unclipped


def per_completion(
    token_loss: torch.Tensor, mask: torch.Tensor, mode: str, max_new_tokens: int
) -> torch.Tensor:
    """One loss per completion [N] from per-token losses [N, T].

    sequence: mean over the completion's own tokens (GRPO); a long completion's tokens
    each weigh less. token_budget: sum over its tokens / max_new_tokens (Dr. GRPO), the same
    weight for every token whatever the completion's length.
    """
    m = mask.to(token_loss)
    total = (token_loss * m).sum(-1)
    if mode == "sequence":
        return total / m.sum(-1).clamp(min=1)
    if mode == "token_budget":
        return total / max_new_tokens
    raise ValueError(f"unknown aggregation {mode!r} (sequence or token_budget)")


def rlhf_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    kl_coef: float,
    aggregation: str = "sequence",
    max_new_tokens: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-completion loss [N]: clipped policy gradient plus kl_coef * k3 KL per token when a
    reference is given (KL in the loss), and per-completion statistics for logging."""
    pg, clipped = clipped_policy_loss(logp, old_logp, advantages, clip_range)
    token_loss = pg
    m = mask.to(logp)
    stats = {"clip_fraction": (clipped.to(logp) * m).sum(-1) / m.sum(-1).clamp(min=1)}
    if ref_logp is not None and kl_coef > 0:
        kl = kl_k3(logp, ref_logp.detach())
        token_loss = token_loss + kl_coef * kl
        stats["kl_k3"] = (kl.detach() * m).sum(-1)
    return per_completion(token_loss, mask, aggregation, max_new_tokens), stats
