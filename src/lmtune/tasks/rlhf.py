"""Online RL of a causal LM from a reward (RLOO / GRPO style), through the generic loop.

A batch is a set of prompts. `loss(model, batch)` does one RL step's worth of work for them:
1. sample k completions per prompt from the current policy (no gradient; tasks/rollout.py),
2. score them with the reward source (a reward-model run or a Python function),
3. evaluate the reference on the new completions (they are new every step, so the reference
   runs online): LoRA/DoRA disable the adapter (no second copy); full/head fine-tuning keep a
   frozen copy of the initial model, made in prepare_reference before any step or resume,
4. forward the policy with gradient, turn rewards into group-relative advantages (the KL
   penalty either lowers the rewards first or joins the loss, rlhf.kl_in), and return the
   summed PPO-clip loss per completion (losses/rlhf.py); the loop divides by the completions
   of the whole optimizer step (num_units).
Per-step statistics (reward, KL, completion length, clip fraction) are handed to the loop by
step_metrics(). With rlhf.updates_per_rollout > 1 a rollout is kept and reused for the next
optimizer steps (the ratio to the sampling-time policy then moves and the clip binds); the
prompts of those steps are skipped, and --resume samples afresh.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from lmtune.losses.rlhf import ADVANTAGES, exact_kl, kl_k1, rlhf_loss
from lmtune.tasks.base import Task
from lmtune.tasks.rewards import load_reward
from lmtune.tasks.rollout import (
    Rollout,
    completion_logits,
    encode_prompt_ids,
    peft_of,
    reference_logits,
    sample,
    token_logps,
)


class RLHFTask(Task):
    """Online RL from a reward; metrics: reward, kl, completion_length, eval_loss (= -(reward -
    kl_coef * kl), the KL-regularised objective, so lower is better like every eval_loss)."""

    name = "rlhf"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        rl = cfg.rlhf
        self.tokenizer, self.rl, self.template = tokenizer, rl, cfg.data.template
        self.max_prompt = cfg.model.max_length - rl.max_new_tokens
        self.reward = load_reward(rl.reward, rl.reward_batch_size)
        self.advantage_fn = ADVANTAGES[rl.advantage]
        self.ref_model: torch.nn.Module | None = None
        self._stats: dict[str, list[float]] = {}
        self._round: list[Rollout] = []  # rollouts kept for reuse (updates_per_rollout > 1)
        self._pos, self._pass = 0, 0  # micro-batch slot within the step; reuse pass of _round
        self.seed, self._step = cfg.run.seed, 0  # a completion's sampling seed (see _seeds)

    # ---- data --------------------------------------------------------------------------
    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """Prompt ids (the end is kept when the prompt leaves no room for max_new_tokens)."""
        ids = encode_prompt_ids(row["prompt"], self.tokenizer, self.template, self.max_prompt)
        return {"prompt_ids": ids, "prompt": row["prompt"], "length": len(ids)}

    def prepare_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Number the training prompts: a completion's sampling seed comes from its prompt's
        number, so it is the same whichever micro-batch or process samples it."""
        return [{**f, "index": i} for i, f in enumerate(features)]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Prompts as lists (sampling pads them); units are the k completions per prompt."""
        k = self.rl.samples_per_prompt
        return {
            "prompt_ids": [f["prompt_ids"] for f in features],
            "prompts": [f["prompt"] for f in features],
            "indices": [f.get("index", 0) for f in features],
            "num_units": len(features) * k,
            "num_examples": len(features),
            "num_tokens": sum(len(f["prompt_ids"]) for f in features) * k,
        }

    # ---- reference ---------------------------------------------------------------------
    def prepare_reference(
        self,
        model: torch.nn.Module,
        features: list[dict[str, Any]],
        rows: list[dict[str, Any]],
        run_dir: Path,
        batch_size: int,
        resume: bool = False,
    ) -> None:
        """Before training (and before a resumed run loads its checkpoint): without an adapter
        to disable, keep a frozen copy of the initial model. No module is changed: the base
        model's dropout is 0 from load (the task's spec), LoRA dropout stays as configured, and
        reference passes run in eval mode."""
        if self.rl.kl_coef > 0 and peft_of(model) is None:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def needs_reference(self) -> bool:
        """The frozen copy (full fine-tuning) is made from the model on its device."""
        return True

    # ---- one step ----------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """An optimizer step begins: the next pass over the kept rollout, or a fresh rollout
        once it has served rlhf.updates_per_rollout steps (a resumed run starts fresh)."""
        self._pos, self._step = 0, step
        if self._round and self._pass + 1 < self.rl.updates_per_rollout:
            self._pass += 1
        else:
            self._round, self._pass = [], 0

    def _seeds(self, indices: list[int]) -> list[int]:
        """One seed per completion (prompt-major): a function of the run seed, the optimizer
        step and the prompt's number, so 2 processes sample what 1 process samples."""
        k, mod = self.rl.samples_per_prompt, 2**63 - 1
        base = (self.seed * 1_000_003 + self._step) * 1_000_003
        return [((base + i) * 1_009 + j) % mod for i in indices for j in range(k)]

    def _sample(self, model: torch.nn.Module, batch: dict[str, Any]) -> Rollout:
        from lmtune.runtime.dist import Dist

        rl = self.rl
        r = sample(
            model,
            self.tokenizer,
            batch["prompt_ids"],
            batch["prompts"],
            rl.samples_per_prompt,
            rl.max_new_tokens,
            rl.temperature,
            rl.top_p,
            seeds=self._seeds(batch["indices"]),
            synced=Dist.get().world_size > 1,  # each process samples its share together
        )
        device = r.input_ids.device
        r.rewards = torch.tensor(self.reward(r.prompts, r.texts), device=device)
        tokens = r.completion_ids
        with torch.no_grad():
            if rl.kl_coef > 0:
                ref = reference_logits(model, self.ref_model, r)
                r.ref_logps = None if ref is None else token_logps(ref, tokens, rl.temperature)
            if rl.updates_per_rollout > 1:  # the "old" policy of PPO: this one, now
                r.old_logps = token_logps(completion_logits(model, r), tokens, rl.temperature)
        return r

    def _rollout(self, model: torch.nn.Module, batch: dict[str, Any]) -> Rollout:
        """A fresh rollout, or the kept one of this micro-batch slot on a reuse pass."""
        if self.rl.updates_per_rollout == 1:
            return self._sample(model, batch)
        if self._pos >= len(self._round):  # the first pass (or a step with more micro-batches)
            self._round.append(self._sample(model, batch))
        r = self._round[self._pos]
        self._pos += 1
        return r

    def _advantages(self, r: Rollout, old: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages, fixed at the first use of a rollout."""
        if r.advantages is None:
            assert r.rewards is not None
            rewards = r.rewards.float()
            if self.rl.kl_in == "reward" and r.ref_logps is not None:
                seq_kl = (kl_k1(old, r.ref_logps) * r.mask).sum(-1)
                rewards = rewards - self.rl.kl_coef * seq_kl
            k = self.rl.samples_per_prompt
            r.advantages = self.advantage_fn(rewards.view(-1, k)).view(-1)
        return r.advantages

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample, score, and the summed per-completion RL loss with the completion count."""
        rl = self.rl
        r = self._rollout(model, batch)
        logp = token_logps(completion_logits(model, r), r.completion_ids, rl.temperature)
        old = r.old_logps if r.old_logps is not None else logp.detach()
        adv = self._advantages(r, old)
        ref = r.ref_logps if rl.kl_in == "loss" else None
        per_seq, stats = rlhf_loss(
            logp,
            old,
            ref,
            adv,
            r.mask,
            rl.clip_range,
            rl.kl_coef,
            rl.aggregation,
            rl.max_new_tokens,
        )
        assert r.rewards is not None
        self._note(r, logp.detach(), stats)
        return per_seq.sum(), torch.tensor(float(per_seq.numel()))

    def _note(self, r: Rollout, logp: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        assert r.rewards is not None
        k = self.rl.samples_per_prompt
        values = {
            "reward": r.rewards.float(),
            "reward_std": r.rewards.float().view(-1, k).std(-1),  # within a prompt's group
            "completion_length": r.lengths.float(),
            "clip_fraction": stats["clip_fraction"],
        }
        if r.ref_logps is not None:
            values["kl"] = (kl_k1(logp, r.ref_logps) * r.mask).sum(-1)
        for key, v in values.items():
            self._stats.setdefault(key, []).extend(v.detach().float().cpu().tolist())

    def step_metrics(self) -> dict[str, float]:
        """Means over the completions since the last call (the loop calls it once a step)."""
        out = {k: sum(v) / len(v) for k, v in self._stats.items() if v}
        self._stats = {}
        return out

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, float]:
        """One completion per prompt (greedy, or sampled at rlhf.eval_temperature with
        rlhf.eval_seed, without touching the training random stream): mean reward, exact KL
        to the reference summed over the completion, and completion length."""
        rl = self.rl
        was_training = model.training
        model.eval()
        feats = [self.encode(r) for r in rows]
        rewards, kls, lengths, records = [], [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rl.eval_seed)
            for i in range(0, len(feats), batch_size):
                chunk = feats[i : i + batch_size]
                r = sample(
                    model,
                    self.tokenizer,
                    [f["prompt_ids"] for f in chunk],
                    [f["prompt"] for f in chunk],
                    1,
                    rl.max_new_tokens,
                    rl.eval_temperature,
                    rl.top_p,
                )
                scores = self.reward(r.prompts, r.texts)
                ref = reference_logits(model, self.ref_model, r)
                if ref is not None:
                    t = rl.temperature  # the distributions the training KL compares
                    kl = exact_kl(completion_logits(model, r) / t, ref / t)
                    kls += (kl * r.mask).sum(-1).tolist()
                rewards += scores
                lengths += r.lengths.tolist()
                records += [
                    {"prompt": p, "completion": c, "reward": s}
                    for p, c, s in zip(r.prompts, r.texts, scores, strict=True)
                ]
        model.train(was_training)
        n = max(len(rewards), 1)
        mean = sum(rewards) / n
        out = {
            "reward": mean,
            "completion_length": sum(lengths) / n,
            "eval_prompts": float(len(rewards)),
        }
        out["reward_std"] = (sum((x - mean) ** 2 for x in rewards) / n) ** 0.5
        objective = mean
        if kls:
            out["kl"] = sum(kls) / len(kls)
            objective -= rl.kl_coef * out["kl"]
        out["eval_loss"] = -objective
        if out_dir is not None:
            with (Path(out_dir) / "completions.jsonl").open("w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return out
