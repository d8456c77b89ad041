"""Penalties that pull fine-tuned weights back toward where they started: L2-SP and EWC.

Both are quadratic in the distance to the anchor w0 (the weights before training):
  L2-SP (Li et al. 2018):          alpha  * sum_i (w_i - w0_i)^2
  EWC   (Kirkpatrick et al. 2017): lambda * sum_i F_i (w_i - w0_i)^2
where F is the diagonal (empirical) Fisher of the reference loss at w0. L2-SP keeps every
weight near its start; EWC lets weights the reference does not care about (small F_i) move.
We scale F to mean 1, so lambda and alpha share a scale and EWC with uniform F equals L2-SP.

A task head trained from scratch (classifier, score, qa_outputs) has no pre-trained value
worth keeping, so it is never penalised; a causal LM's lm_head is pre-trained and is.
The loop adds the penalty once per optimizer step (train/loop.py, `regularizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmtune.errors import UserError

if TYPE_CHECKING:
    from lmtune.config import Config
    from lmtune.evaluate.forgetting import Forgetting


def l2sp_penalty(
    params: Mapping[str, torch.Tensor], anchors: Mapping[str, torch.Tensor], weight: float
) -> torch.Tensor:
    """weight * sum over anchored tensors of (w - w0)^2; differentiable in params."""
    return weight * torch.stack([(params[n] - a).pow(2).sum() for n, a in anchors.items()]).sum()


def ewc_penalty(
    params: Mapping[str, torch.Tensor],
    anchors: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    weight: float,
) -> torch.Tensor:
    """weight * sum over anchored tensors of F * (w - w0)^2; differentiable in params."""
    return (
        weight
        * torch.stack(
            [(fisher[n] * (params[n] - a).pow(2)).sum() for n, a in anchors.items()]
        ).sum()
    )


def penalized_parameters(
    model: torch.nn.Module, head_names: Iterable[str]
) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters by name, without those of the task-head modules in head_names.

    head_names are children of the transformers model (adapters.head_module_names); for a
    peft model their adapter copies are excluded too, found by identity, not by name.
    """
    get_base = getattr(model, "get_base_model", None)  # a peft model: its transformers model
    base = get_base() if callable(get_base) else model
    head_ids = {
        id(p)
        for name in head_names
        if name != "lm_head" and hasattr(base, name)
        for p in getattr(base, name).parameters()
    }
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in head_ids}


def diagonal_fisher(
    params: Mapping[str, torch.nn.Parameter], sample_losses: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean over samples of the squared gradient of each sample's loss (empirical Fisher).

    sample_losses yields one scalar loss per example, each with a fresh graph to params; the
    gradients are taken with autograd.grad, so the params' .grad is left untouched.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    fisher = [torch.zeros_like(t) for t in tensors]
    count = 0
    for loss in sample_losses:
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f.add_(g.detach().float().pow(2))
        count += 1
    if count == 0:
        raise UserError(
            "forgetting.mitigation.ewc: no reference example to compute the Fisher on "
            "(check forgetting.reference / forgetting.prior)"
        )
    return {n: f / count for n, f in zip(names, fisher, strict=True)}


def normalize_fisher(fisher: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fisher divided by its mean over all entries, so mean(F) == 1 (see the module docstring)."""
    total = sum(float(f.sum()) for f in fisher.values())
    numel = sum(f.numel() for f in fisher.values())
    if total <= 0 or numel == 0:
        raise UserError(
            "forgetting.mitigation.ewc: the Fisher is zero (the reference loss has no "
            "gradient for the trainable weights); use l2sp instead"
        )
    mean = total / numel
    return {n: f / mean for n, f in fisher.items()}


@dataclass
class Regularizer:
    """The loop's penalty: L2-SP and/or EWC around anchors taken before training."""

    anchors: dict[str, torch.Tensor]
    l2sp: float = 0.0
    ewc: float = 0.0
    fisher: dict[str, torch.Tensor] | None = None

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        """The penalty for the model's current weights (looked up by parameter name)."""
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(iter(self.anchors.values())).device)
        if self.l2sp > 0:
            total = total + l2sp_penalty(params, self.anchors, self.l2sp)
        if self.ewc > 0 and self.fisher is not None:
            total = total + ewc_penalty(params, self.anchors, self.fisher, self.ewc)
        return total


def build_regularizer(
    model: torch.nn.Module,
    head_names: Iterable[str],
    l2sp: float,
    ewc: float,
    sample_losses: Callable[[], Iterable[torch.Tensor]] | None = None,
) -> Regularizer | None:
    """A Regularizer anchored at the model's current weights, or None when both weights are 0.

    sample_losses() yields the per-example reference losses for the EWC Fisher (needed when
    ewc > 0). Call this after the model is on its device: anchors live beside the weights.
    """
    if l2sp <= 0 and ewc <= 0:
        return None  # off: the loop runs exactly as without mitigation
    params = penalized_parameters(model, head_names)
    if not params:
        raise UserError(
            "forgetting.mitigation l2sp/ewc: no trainable weight outside the task head "
            "to pull back (adapter.type head?); use adapter.type full or lora"
        )
    anchors = {n: p.detach().clone() for n, p in params.items()}
    fisher = None
    if ewc > 0:
        if sample_losses is None:
            raise UserError(
                "forgetting.mitigation.ewc needs forgetting.reference or forgetting.prior"
            )
        fisher = normalize_fisher(diagonal_fisher(params, sample_losses()))
    return Regularizer(anchors, l2sp=l2sp, ewc=ewc, fisher=fisher)


def start_forgetting(
    cfg: Config,
    model: torch.nn.Module,
    tokenizer: Any,
    head_names: list[str],
    n_train: int,
    is_main: bool = True,
) -> Forgetting:
    """Before training: measure the reference (main process), build L2-SP/EWC and replay.

    Runs on a forked random stream, so switching the measurement on or off leaves the
    training itself bit-identical.
    """
    from lmtune.evaluate.forgetting import Forgetting, build_probe, replay_features

    m = cfg.forgetting.mitigation
    with torch.random.fork_rng(devices=[]):
        probe = build_probe(cfg, tokenizer, model)
        before = probe.score(model) if probe is not None and is_main else None
        losses = (lambda: probe.sample_losses(model, m.ewc.samples)) if probe is not None else None
        regularizer = build_regularizer(model, head_names, m.l2sp, m.ewc.weight, losses)
    replay = replay_features(cfg, tokenizer, n_train)
    info = {
        "l2sp": m.l2sp,
        "ewc": m.ewc.model_dump() if m.ewc.weight > 0 else None,
        "replay": {**m.replay.model_dump(), "rows": len(replay)} if replay else None,
        "adapter": cfg.adapter.type,
    }
    return Forgetting(probe, before, regularizer, replay, info)
