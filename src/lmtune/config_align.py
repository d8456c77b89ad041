"""Config sections for preference and reinforcement learning: `preference:` (tasks reward,
dpo, orpo) and `rlhf:` (task rlhf). config.py adds each as a section of a run config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.config_base import Strict


class PreferenceConfig(Strict):
    """Preference learning (tasks reward, dpo, orpo): losses, reference model, truncation."""

    loss: Literal["sigmoid", "robust", "ipo", "hinge", "simpo"] = Field(
        "sigmoid",
        description="DPO-family loss (task dpo): sigmoid (DPO), robust (rDPO), ipo, hinge, or simpo (length-normalised, no reference model).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="DPO/IPO/hinge/SimPO temperature beta (IPO: its tau); higher keeps the policy closer to the reference.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Probability that a preference label is flipped: conservative DPO for sigmoid/simpo, rDPO for robust.",
    )
    simpo_gamma: float = Field(
        0.5,
        description="SimPO target reward margin gamma (absolute, in reward units; TRL's CPO simpo_gamma).",
    )
    orpo_lambda: float = Field(
        0.1,
        gt=0,
        description="ORPO weight lambda of the odds-ratio term beside the chosen-response NLL (TRL's ORPO beta).",
    )
    reference: Literal["auto", "precompute"] = Field(
        "auto",
        description="DPO reference log-probs. auto: LoRA/DoRA use the base with the adapter disabled at each step, full/head fine-tuning precompute them once (cached in the run folder); precompute: always precompute.",
    )
    ties: Literal["drop", "keep"] = Field(
        "drop",
        description="Pairwise rows whose preference is a tie: drop (counted in rejects.jsonl) or keep (task reward only: a tie trains both rewards toward equal, target P(a > b) = 0.5, and is left out of pairwise_accuracy).",
    )
    max_prompt_length: int | None = Field(
        None,
        gt=0,
        description="Prompts longer than this keep their last tokens (the end, next to the response); None: prompts are not cut, and a prompt that leaves no room for a response rejects the row.",
    )


class RLHFConfig(Strict):
    """Online RL from a reward (task rlhf): sample, score, group-relative advantages, KL, clip."""

    reward: str | None = Field(
        None,
        description="Where rewards come from: a reward-model run or model folder (a `task: reward` run), or a Python function as module:function (called as f(prompt, completion) -> float; imported from the current directory or PYTHONPATH).",
    )
    samples_per_prompt: int = Field(
        4,
        ge=2,
        description="Completions sampled per prompt each step (k); advantages compare the k completions of one prompt, so at least 2.",
    )
    max_new_tokens: int = Field(
        32,
        gt=0,
        description="Most tokens sampled per completion (sampling stops earlier at the end-of-sequence token).",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature for training rollouts; log-probs in the loss use the same temperature.",
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="Nucleus sampling: sample from the smallest token set with this much probability (1.0: off).",
    )
    advantage: Literal["rloo", "grpo"] = Field(
        "rloo",
        description="Group-relative advantage: rloo (reward minus the mean of the other k-1 completions), grpo (reward minus the group mean, divided by the group standard deviation).",
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="Weight beta of the KL penalty against the reference (the initial model); 0 switches the reference off.",
    )
    kl_in: Literal["loss", "reward"] = Field(
        "loss",
        description="Where the KL penalty goes: loss (GRPO: beta * per-token k3 estimate added to the loss) or reward (PPO/RLOO: beta * the summed per-token log-ratio subtracted from each completion's reward before advantages).",
    )
    clip_range: float = Field(
        0.2,
        gt=0,
        description="PPO ratio clipping epsilon: the policy ratio to the sampling-time policy is clipped to [1-eps, 1+eps]; only binds when updates_per_rollout > 1.",
    )
    updates_per_rollout: int = Field(
        1,
        ge=1,
        description="Optimizer steps on each set of sampled completions (PPO epochs, TRL's num_iterations); >1 reuses a rollout for the next steps, whose own prompts are then skipped.",
    )
    aggregation: Literal["sequence", "token_budget"] = Field(
        "sequence",
        description="Per-completion loss: sequence (mean over its tokens, GRPO) or token_budget (sum over its tokens / max_new_tokens, Dr. GRPO: no preference for short or long completions).",
    )
    eval_temperature: float = Field(
        0.0, ge=0, description="Sampling temperature for evaluation completions (0: greedy)."
    )
    eval_seed: int = Field(
        0,
        description="Seed for sampled evaluation completions (eval never disturbs the training random stream).",
    )
    reward_batch_size: int = Field(
        32, gt=0, description="Completions per forward pass of a reward model."
    )
