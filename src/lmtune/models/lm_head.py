"""Log-probabilities of chosen target tokens of a causal LM, computed where they are needed.

Training a small causal LM is dominated by its vocabulary projection: with a 30k vocabulary
and 8k loss positions per batch the [N, vocab] fp32 logits alone are 1 GB, and a log-softmax
and its gradient double that. So: the decoder body runs once, only the positions that carry
a target reach the LM head, and the head + log-softmax run in chunks whose logits are
recomputed in backward (losses/logprobs.linear_token_logps) instead of kept.
"""

from __future__ import annotations

import inspect
import sys
from functools import cache

import torch
import torch.nn.functional as F

from lmtune.losses.logprobs import linear_token_logps

# Causal LMs whose forward is exactly `logits = lm_head(base_model(...).last_hidden_state)`:
# no logit soft-capping (Gemma 2/3), scaling (Cohere, Granite) or extra outputs.
_PLAIN_LM_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3"})


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder body, LM head) of a plain causal LM, or None to use the model's own forward.

    Looks through a peft wrapper (LoRA layers live inside the same modules); a compiled
    model keeps its compiled forward (None).
    """
    if hasattr(model, "_orig_mod"):
        return None
    hf = _hf_model(model)
    if getattr(getattr(hf, "config", None), "model_type", None) not in _PLAIN_LM_HEAD:
        return None
    body = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    # A LoRA-wrapped head (modules_to_save, target) is no Linear: the model's forward then.
    if body is None or body is hf or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


@cache
def _takes_logits_mask(model_cls: type) -> bool:
    # Models whose forward slices hidden states with transformers' slice_logits_to_keep accept
    # a boolean [batch, seq] mask; older or remote-code models may only accept an int.
    module = sys.modules.get(model_cls.__module__)
    return (
        hasattr(module, "slice_logits_to_keep")
        and "logits_to_keep" in inspect.signature(model_cls.forward).parameters
    )


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    get_base = getattr(model, "get_base_model", None)  # peft wrapper
    return get_base() if callable(get_base) else model


def target_logps(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    ignore: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), argmax prediction, target, row index) at every position t whose next
    token labels[:, t + 1] is not `ignore`; the model sees `inputs` (input_ids, masks)."""
    targets_mask = labels[:, 1:] != ignore  # position t predicts token t+1
    targets = labels[:, 1:][targets_mask]
    rows = torch.arange(labels.shape[0], device=labels.device)
    row_index = rows[:, None].expand_as(targets_mask)[targets_mask]
    parts = body_and_head(model)
    if parts is not None:
        body, head = parts
        hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1][targets_mask]
        logp, pred = linear_token_logps(hidden, head.weight, head.bias, targets)
        return logp, pred, targets, row_index
    keep = F.pad(targets_mask, (0, 1), value=False)
    if _takes_logits_mask(type(_hf_model(model))):
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [N, V] only
    else:
        logits = model(**inputs, use_cache=False).logits[keep]
    logits = logits.float()
    logp = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return logp, logits.argmax(-1), targets, row_index
