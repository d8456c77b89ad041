"""Sampling completions from a causal LM and reading their log-probs back: what online RL
(tasks/rlhf.py) and the human-feedback tool (feedback.py) share.

A rollout is one padded batch [N, P + T]: prompts LEFT-padded to a common length P (so every
completion starts at column P, where generate() writes it), completions right-padded to T.
A completion's tokens run up to and including its first EOS (stopping is an action the policy
learns); everything after it is masked. Position ids are counted from each row's first real
token, in generate() and in the scoring forward alike, so left padding changes nothing.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from lmtune.runtime.weights import base_of
from lmtune.tasks.base import eval_mode
from lmtune.tasks.pairs import keep_end

Prompt = str | list[dict[str, str]]


def encode_prompt_ids(prompt: Prompt, tokenizer: Any, template: str, max_tokens: int) -> list[int]:
    """Prompt token ids exactly as SFT/DPO render them (BOS + text, or the chat template up
    to the assistant turn), keeping the END (and BOS) when longer than max_tokens."""
    from lmtune.data.templates import generation_prompt_ids

    ids = generation_prompt_ids(prompt, "prompt", tokenizer, template)
    bos = tokenizer.bos_token_id
    keep_first = 1 if bos is not None and ids[:1] == [bos] else 0
    return keep_end(ids, max_tokens, keep_first)


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts (row i*k + j: completion j of prompt i)."""

    input_ids: torch.Tensor  # [N, P + T] left-padded prompt, then the completion
    attention_mask: torch.Tensor  # [N, P + T] 0 on prompt padding and after the EOS
    prompt_len: int  # P
    mask: torch.Tensor  # [N, T] bool: completion tokens (up to and including the first EOS)
    texts: list[str]  # decoded completions (without EOS and special tokens)
    prompts: list[Prompt]  # the prompt of every row (repeated k times)
    rewards: torch.Tensor | None = None  # [N] scores, filled by the caller
    ref_logps: torch.Tensor | None = None  # [N, T] reference per-token log-probs
    old_logps: torch.Tensor | None = None  # [N, T] policy log-probs at sampling time
    advantages: torch.Tensor | None = None  # [N], fixed once computed (reused rollouts)

    @property
    def completion_ids(self) -> torch.Tensor:
        """[N, T] completion tokens (padding after the EOS)."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def lengths(self) -> torch.Tensor:
        """[N] completion lengths in tokens (EOS included)."""
        return self.mask.sum(-1)

    def position_ids(self) -> torch.Tensor:
        """Positions counted from each row's first real token (what generate() uses)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a torch.compile wrapper (generate() lives on the real one)."""
    return getattr(model, "_orig_mod", model)


def peft_of(model: torch.nn.Module) -> Any:
    """The peft wrapper of a (possibly compiled) model, or None for a plain model."""
    model = unwrap(model)
    return model if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None


def completion_mask(completions: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[N, T] true up to and including the first EOS of each row (all true without one)."""
    if eos_id is None:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = completions == eos_id
    # Tokens strictly after the first EOS: at least one EOS earlier in the row.
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return ~after


class RowSeededSampler:
    """A transformers logits processor that makes greedy decoding a sample: softmax(logits /
    temperature) within the top_p nucleus, drawn by Gumbel-max (the argmax of the scaled
    logits plus Gumbel noise is distributed as their softmax) with the noise of each row from
    its own seeded generator. A row's tokens then depend on its seed and its own prefix only."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float = 1.0) -> None:
        from transformers import TopPLogitsWarper

        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scaled, nucleus-filtered scores plus each row's Gumbel noise (rows in order)."""
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return scores + gumbel.to(scores)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    prompts: list[Prompt],
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seeds: list[int] | None = None,
    synced: bool = False,
) -> Rollout:
    """k completions of every prompt (temperature 0: greedy, then k should be 1), in eval
    mode (no dropout while sampling); the model's train/eval mode is restored after.

    seeds (one per completion, prompt-major): each completion draws from its own seeded
    stream (RowSeededSampler), so it does not depend on the batch or process it is sampled
    in; without them, from the global random stream. synced: every process of the group
    calls this together and keeps stepping until all are done (FSDP gathers weights block
    by block, so every process must run as many forwards)."""
    gen_model: Any = unwrap(model)  # a transformers model: generate() is not on nn.Module
    was_training = gen_model.training
    gen_model.eval()
    device = next(gen_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in prompt_ids)
    rows = [ids for ids in prompt_ids for _ in range(k)]
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    attn = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    # transformers defaults to top-50 sampling: only temperature and top_p decide here, so
    # the sampling distribution is the one whose log-probs the loss uses.
    how: dict[str, Any] = (
        {"do_sample": False}
        if temperature <= 0
        else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    )
    if seeds is not None and temperature > 0:
        from transformers import LogitsProcessorList

        assert len(seeds) == len(rows), (len(seeds), len(rows))
        sampler = RowSeededSampler(seeds, temperature, top_p)
        how = {"do_sample": False, "logits_processor": LogitsProcessorList([sampler])}
    out = gen_model.generate(
        input_ids=input_ids,
        attention_mask=attn,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        synced_gpus=synced,
        **how,
    )
    gen_model.train(was_training)
    completions = out[:, width:]
    mask = completion_mask(completions, tokenizer.eos_token_id)
    completions = completions.masked_fill(~mask, pad)
    texts = [
        tokenizer.decode(c[m & (c != tokenizer.eos_token_id)].tolist(), skip_special_tokens=True)
        for c, m in zip(completions, mask, strict=True)
    ]
    return Rollout(
        input_ids=torch.cat([input_ids, completions], 1),
        attention_mask=torch.cat([attn, mask.long()], 1),
        prompt_len=width,
        mask=mask,
        texts=texts,
        prompts=[p for p in prompts for _ in range(k)],
    )


@functools.cache
def _takes_logits_to_keep(model_cls: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_cls.forward).parameters


def completion_logits(model: torch.nn.Module, r: Rollout) -> torch.Tensor:
    """[N, T, V] logits predicting each completion token (only those positions reach the
    vocabulary projection when the model supports logits_to_keep)."""
    t = r.mask.shape[1]
    inputs: dict[str, Any] = {
        "input_ids": r.input_ids,
        "attention_mask": r.attention_mask,
        "position_ids": r.position_ids(),
        "use_cache": False,
    }
    base = base_of(unwrap(model))
    if _takes_logits_to_keep(base.__class__):
        logits = model(**inputs, logits_to_keep=t + 1).logits
    else:
        logits = model(**inputs).logits[:, -(t + 1) :]
    return logits[:, :-1]


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, T] log-probs of tokens under softmax(logits / temperature), in fp32."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def reference_logits(
    model: torch.nn.Module, ref_model: torch.nn.Module | None, r: Rollout
) -> torch.Tensor | None:
    """Completion logits under the reference: the base with the adapter disabled (LoRA/DoRA:
    no second copy), else ref_model (a frozen copy of the initial model), else None."""
    with torch.no_grad():
        peft = peft_of(model)
        if peft is not None:  # eval mode: the reference is fixed, whatever dropout training uses
            with eval_mode(peft), peft.disable_adapter():
                return completion_logits(peft, r)
        if ref_model is not None:
            return completion_logits(ref_model, r)
    return None
