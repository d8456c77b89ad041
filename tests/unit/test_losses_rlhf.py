"""Online-RL losses (losses/rlhf.py) against hand-computed values, Monte Carlo checks of the KL
estimators, and TRL's GRPO loss (grpo and dr_grpo) as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from lmtune.losses.rlhf import (
    EPS,
    clipped_policy_loss,
    exact_kl,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    per_completion,
    rlhf_loss,
    rloo_advantages,
)


def test_rloo_subtracts_the_mean_of_the_other_completions() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    # 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5; equal rewards: no signal.
    assert rloo_advantages(r).tolist() == [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_grpo_normalises_by_the_group_std() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])  # mean 2, unbiased std 1
    adv = grpo_advantages(r)
    assert adv[0].tolist() == pytest.approx([-1 / (1 + EPS), 0.0, 1 / (1 + EPS)])
    assert adv[1].tolist() == [0.0, 0.0, 0.0]


def test_kl_estimators_by_hand() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    # x = log(0.25/0.5): exp(x) - x - 1 = 0.5 + log 2 - 1
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_k3(ref, ref).item() == 0.0


def test_k1_and_k3_are_unbiased_estimates_of_the_exact_kl() -> None:
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(7, generator=g), torch.randn(7, generator=g)
    logp, logq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    exact = exact_kl(p_logits, q_logits).item()
    assert exact == pytest.approx(float((logp.exp() * (logp - logq)).sum()))
    x = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=g)  # x ~ p
    assert kl_k1(logp[x], logq[x]).mean().item() == pytest.approx(exact, rel=0.03)
    k3 = kl_k3(logp[x], logq[x])
    assert k3.min() >= 0 and k3.mean().item() == pytest.approx(exact, rel=0.03)


def test_clipped_policy_loss_by_hand() -> None:
    # ratios 1.5 and 0.5 against advantages +1 and -1, clip range 0.2
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, old, adv, 0.2)
    # -min(1.5, 1.2) ; -min(-1.5, -1.2) ; -min(0.5, 0.8) ; -min(-0.5, -0.8)
    assert loss[:, 0].tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped[:, 0].tolist() == [True, False, False, True]
    loss.sum().backward()
    # Where the clip binds there is no gradient; elsewhere d(-ratio*A)/dlogp = -ratio*A.
    assert logp.grad[:, 0].tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0])


def test_on_policy_gradient_is_reinforce() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, logp.detach(), adv, 0.2)
    loss.sum().backward()
    assert not clipped.any()
    assert logp.grad.tolist() == [[-2.0, -2.0], [1.0, 1.0]]  # -A per token


def test_per_completion_aggregation() -> None:
    tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert per_completion(tok, mask, "sequence", 4).tolist() == [2.0, 4.0]
    assert per_completion(tok, mask, "token_budget", 4).tolist() == [1.5, 1.0]
    with pytest.raises(ValueError, match="aggregation"):
        per_completion(tok, mask, "mean", 4)


def test_rlhf_loss_adds_the_k3_kl_on_completion_tokens_only() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5], [0.5, 0.1]]))
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, 0.0])
    loss, stats = rlhf_loss(logp, logp, ref, adv, mask, 0.2, kl_coef=0.1)
    k3 = 0.5 + math.log(2) - 1  # first token of row 0; the others are 0 or masked
    assert loss.tolist() == pytest.approx([(-1 + 0.1 * k3 - 1) / 2, 0.0])
    assert stats["kl_k3"].tolist() == pytest.approx([k3, 0.0])
    no_ref, stats = rlhf_loss(logp, logp, None, adv, mask, 0.2, kl_coef=0.1)
    assert no_ref.tolist() == pytest.approx([-1.0, 0.0]) and "kl_k3" not in stats


def _trl_grpo_loss(logp, old, ref, adv, mask, beta, eps, loss_type, max_len):
    """TRL's own GRPOTrainer._compute_loss, run on a stand-in trainer that hands it our
    per-token log-probs (only the attributes that method reads are provided)."""
    trl = pytest.importorskip("trl")
    from collections import defaultdict
    from types import SimpleNamespace

    n, t = logp.shape
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        epsilon_low=eps,
        epsilon_high=eps,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        max_completion_length=max_len,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=SimpleNamespace(
            gather=lambda x: x,
            gather_for_metrics=lambda x: x,
            reduce=lambda x, reduction: x,
            num_processes=1,
        ),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    return trl.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize(
    ("loss_type", "aggregation"), [("grpo", "sequence"), ("dr_grpo", "token_budget")]
)
def test_matches_trl_grpo_loss(loss_type: str, aggregation: str) -> None:
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(6, 5, generator=g) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(6, 5, generator=g)  # ratios on both sides of the clip
    ref = logp.detach() + 0.5 * torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(6, generator=g)
    trl = _trl_grpo_loss(logp, old, ref, adv, mask, 0.04, 0.2, loss_type, 5)
    (trl_grad,) = torch.autograd.grad(trl, logp)
    ours, _ = rlhf_loss(logp, old, ref, adv, mask, 0.2, 0.04, aggregation, max_new_tokens=5)
    # The loop divides the summed per-completion losses by the completions of the step: a mean.
    assert ours.mean().item() == pytest.approx(trl.item(), abs=1e-6)
    (our_grad,) = torch.autograd.grad(ours.mean(), logp)
    assert torch.allclose(our_grad, trl_grad, atol=1e-7)
