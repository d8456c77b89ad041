"""What the preference tasks (reward, dpo, orpo) share: tokenizing a pair, batching it, and the
summed log-probability of each response.

Tokenization. A text prompt is BOS + its tokens and a response is tokenized on its own
(preceded by one space when neither side has whitespace at the seam, since cleaning strips
both) and followed by EOS, in the loss like in SFT. A message prompt goes through the chat
template exactly as SFT renders it (templates.encode_prompt / encode_sft_row), so a DPO model
sees the prompts it was SFT-trained on. Truncation is explicit: the prompt keeps its END (the
part next to the response; BOS is kept) when preference.max_prompt_length cuts it, responses
keep their START to fit model.max_length, and a prompt that leaves no room for a response, or
a pair whose responses are identical once cut, is rejected (ValueError, like SFT).

Batching. Chosen and rejected go through the model as ONE batch [chosen_1..B, rejected_1..B]:
one forward instead of two.

Log-probs. Only the positions that predict a response token reach the vocabulary projection,
and it runs in chunks that are recomputed in backward (models/lm_head.py): prompt and padding
positions never produce logits, and the response positions never all at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmtune.atomic import atomic_write_text
from lmtune.data.collate import IGNORE, pad_batch
from lmtune.losses.logprobs import sequence_sums
from lmtune.tasks.base import Task

PairStats = dict[str, torch.Tensor]


def keep_end(ids: list[int], n: int, keep_first: int = 0) -> list[int]:
    """The last n tokens of ids, keeping its first keep_first tokens (BOS) in front."""
    if len(ids) <= n:
        return ids
    return ids[:keep_first] + ids[len(ids) - (n - keep_first) :]


def fit_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    max_length: int,
    max_prompt_length: int | None = None,
    keep_first: int = 0,
    reserved: int = 0,
) -> tuple[list[int], list[int], list[int]]:
    """Apply the truncation policy to a tokenized pair; ValueError when nothing is left to learn.

    The prompt keeps its end (at most max_prompt_length tokens), each response its start
    (reserved + prompt + response <= max_length; reserved: special tokens added later).
    """
    if max_prompt_length is not None:
        prompt = keep_end(prompt, max_prompt_length, keep_first)
    room = max_length - reserved - len(prompt)
    if room < 1 or not chosen or not rejected:
        raise ValueError(
            f"the prompt has {len(prompt)} tokens: no room for a response within "
            f"model.max_length={max_length}; raise model.max_length or set "
            "preference.max_prompt_length (prompts then keep their last tokens)"
        )
    chosen, rejected = chosen[:room], rejected[:room]
    if chosen == rejected:
        raise ValueError(
            f"chosen and rejected are identical within their first {room} tokens (all that fits "
            f"after the prompt in model.max_length={max_length}); raise model.max_length"
        )
    return prompt, chosen, rejected


def pair_key(*parts: list[int]) -> str:
    """A stable id for a tokenized pair (keys the cached reference log-probs)."""
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:24]


class PairEncoder:
    """Tokenize canonical preference rows for a causal LM: prompt ids + response ids."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        template: str = "auto",
        max_prompt_length: int | None = None,
    ) -> None:
        self.tokenizer, self.max_length, self.template = tokenizer, max_length, template
        self.max_prompt_length = max_prompt_length

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _eos(self, ids: list[int]) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids

    def prompt_and_responses(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        """Untruncated (prompt ids, chosen ids, rejected ids); responses end with EOS."""
        from lmtune.data.templates import encode_sft_row, generation_prompt_ids

        prompt = row["prompt"]
        prompt_ids = generation_prompt_ids(prompt, "preference", self.tokenizer, self.template)
        if isinstance(prompt, list):
            responses = []
            for key in ("chosen", "rejected"):
                chat = {"messages": [*prompt, {"role": "assistant", "content": row[key]}]}
                full = encode_sft_row(chat, "chat", self.tokenizer, 10**9, self.template)[
                    "input_ids"
                ]
                if full[: len(prompt_ids)] != prompt_ids:
                    raise ValueError(
                        "the chat template renders the prompt differently once a "
                        "response follows; set data.template: chatml"
                    )
                responses.append(full[len(prompt_ids) :])
            return prompt_ids, responses[0], responses[1]
        chosen, rejected = (
            self._eos(self._text_ids(joiner(prompt, row[k]) + row[k]))
            for k in ("chosen", "rejected")
        )
        return prompt_ids, chosen, rejected

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """{prompt_ids, chosen_ids, rejected_ids, length, key[, margin]} for one row."""
        prompt, chosen, rejected = self.prompt_and_responses(row)
        bos = self.tokenizer.bos_token_id
        keep_first = 1 if prompt[:1] == [bos] and bos is not None else 0
        prompt, chosen, rejected = fit_pair(
            prompt, chosen, rejected, self.max_length, self.max_prompt_length, keep_first
        )
        feat = {
            "prompt_ids": prompt,
            "chosen_ids": chosen,
            "rejected_ids": rejected,
            "length": len(prompt) + max(len(chosen), len(rejected)),
            "key": pair_key(prompt, chosen, rejected),
        }
        if row.get("margin") is not None:
            feat["margin"] = float(row["margin"])
        return feat


def joiner(prompt: str, response: str) -> str:
    """What goes between a text prompt and its response: one space unless either side
    already has whitespace at the seam (cleaning strips both, HH-RLHF relies on the space)."""
    if not prompt or prompt[-1].isspace() or not response or response[0].isspace():
        return ""
    return " "


def collate_pairs(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """One batch of 2B sequences, chosen first: input_ids, attention_mask, labels (-100 outside
    responses), plus num_pairs/num_units/num_examples/num_tokens, margin and, when every
    feature has them, the precomputed reference log-probs."""
    seqs = [
        {"input_ids": f["prompt_ids"] + f[key], "labels": [IGNORE] * len(f["prompt_ids"]) + f[key]}
        for key in ("chosen_ids", "rejected_ids")
        for f in features
    ]
    batch: dict[str, Any] = pad_batch(seqs, pad_id, keys=("input_ids", "labels"))
    add_pair_fields(batch, features)
    return batch


def add_pair_fields(batch: dict[str, Any], features: list[dict[str, Any]]) -> None:
    """Counts the loop needs (units = pairs), margins and cached reference log-probs."""
    n = len(features)
    batch.update(
        num_pairs=n, num_units=n, num_examples=n, num_tokens=int(batch["attention_mask"].sum())
    )
    batch["margin"] = torch.tensor([float(f.get("margin", 0.0)) for f in features])
    if any(f.get("tie") for f in features):
        batch["tie"] = torch.tensor([bool(f.get("tie")) for f in features])
    if all("ref_chosen" in f for f in features):
        batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features])
        batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features])


def response_logps(
    model: torch.nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, token count) of the response of every sequence in the batch."""
    from lmtune.models.lm_head import target_logps

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logp, _, _, rows = target_logps(model, inputs, batch["labels"], IGNORE)
    return sequence_sums(logp, rows, batch["labels"].shape[0])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch to device."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def encode_all(
    encode: Callable[[dict[str, Any]], dict[str, Any]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Encoded rows, skipping rows the data step would have rejected (no room for a response)."""
    feats = []
    for r in rows:
        try:
            feats.append(encode(r))
        except ValueError:
            continue
    return feats


def cached_reference(
    path: Path,
    fingerprint: dict[str, Any],
    wanted: list[dict[str, Any]],
    compute: Callable[[list[dict[str, Any]]], dict[str, list[float]]],
    resume: bool,
    label: str,
    unit: str,
) -> dict[str, list[float]]:
    """key -> precomputed reference values for every feature in `wanted` (tasks dpo, kto).

    With resume, the values saved at `path` are reused when its fingerprint (the base model)
    matches; only the missing keys go to `compute`, each process scoring its own share, and
    the main process writes the whole cache back atomically (a killed run leaves the old one).
    The console says what is computed (label) for how many features (unit, e.g. pair).
    """
    from lmtune.runtime.dist import Dist

    cache: dict[str, list[float]] = {}
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            cache = saved["logps"]
    missing = list({f["key"]: f for f in wanted if f["key"] not in cache}.values())
    dist = Dist.get()
    if not missing:
        dist.print(f"{label}: all {len(wanted)} {unit}(s) reused from {path}")
        return cache
    dist.print(f"computing {label} for {len(missing)} {unit}(s)")
    for part in dist.all_gather(compute(missing[dist.rank :: dist.world_size])):
        cache.update(part)
    if dist.is_main:
        atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "logps": cache}))
    return cache


@torch.no_grad()
def evaluate_pairs(
    model: torch.nn.Module,
    feats: list[dict[str, Any]],
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    stats: Callable[[torch.nn.Module, dict[str, Any]], PairStats],
) -> dict[str, float]:
    """Mean of every per-pair statistic over feats (eval_loss from 'loss'), in eval mode.

    *_accuracy statistics are booleans averaged into fractions.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = sorted(feats, key=lambda f: f["length"])  # less padding
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(feats), batch_size):
        batch = to_device(collate(feats[i : i + batch_size]), device)
        for name, value in stats(model, batch).items():
            parts.setdefault(name, []).append(value.detach().float().cpu())
    model.train(was_training)
    out = {
        ("eval_loss" if k == "loss" else k): float(torch.cat(v).mean()) for k, v in parts.items()
    }
    out["eval_pairs"] = float(len(feats))
    return out


class PairStatsTask(Task):
    """`loss` and `evaluate` of a pairwise task, both read off its per-pair `pair_stats`.

    A subclass supplies `encode`, `collate` and `pair_stats(model, batch)`, whose "loss" is
    the per-pair loss; every other statistic is averaged over the pairs in evaluation.
    """

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def pair_stats(self, model: torch.nn.Module, batch: dict[str, Any]) -> PairStats:
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed per-pair loss and the number of pairs."""
        return self.pair_stats(model, batch)["loss"].sum(), torch.tensor(float(batch["num_pairs"]))

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, float]:
        """Means of the per-pair statistics over the rows that encode (eval_loss, eval_pairs)."""
        return evaluate_pairs(
            model, self.eval_features(rows), batch_size, self.collate, self.pair_stats
        )

    def eval_features(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The encoded eval rows (a task that needs more on them, such as a reference, adds it)."""
        return encode_all(self.encode, rows)
