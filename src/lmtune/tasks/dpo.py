"""DPO and its family (robust, IPO, hinge, SimPO) on a causal LM, through the generic loop.

The reference model is never a second copy of the weights:
- LoRA/DoRA: the reference is the base model, i.e. the policy with its adapter disabled (peft's
  `disable_adapter()`), one extra no-grad forward per step;
- full or head fine-tuning (or preference.reference: precompute): the reference log-probs of
  every train/eval/test pair are computed once before training, stored in the features and
  cached in RUN_DIR/reference_logps.json, which `--resume` reuses instead of recomputing.
SimPO needs no reference at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmtune.losses.dpo import DPO_LOSSES, REFERENCE_FREE, LossParams, PairLogps, implicit_rewards
from lmtune.tasks.base import eval_mode
from lmtune.tasks.pairs import (
    PairEncoder,
    PairStats,
    PairStatsTask,
    cached_reference,
    collate_pairs,
    encode_all,
    response_logps,
    to_device,
)
from lmtune.tasks.rollout import peft_of

CACHE_FILE = "reference_logps.json"


@torch.no_grad()
def compute_reference(
    model: torch.nn.Module, task: DPOTask, features: list[dict[str, Any]], batch_size: int
) -> dict[str, list[float]]:
    """key -> [chosen, rejected] summed log-probs under the reference (the model as it is now,
    with any adapter disabled), in eval mode."""
    device = next(model.parameters()).device
    peft = peft_of(model)
    out: dict[str, list[float]] = {}
    feats = sorted(features, key=lambda f: f["length"])
    with eval_mode(model):
        for i in range(0, len(feats), batch_size):
            chunk = feats[i : i + batch_size]
            batch = to_device(task.collate(chunk), device)
            if peft is not None:
                with peft.disable_adapter():
                    sums, _ = response_logps(peft, batch)
            else:
                sums, _ = response_logps(model, batch)
            n = len(chunk)
            for f, c, r in zip(chunk, sums[:n].tolist(), sums[n:].tolist(), strict=True):
                out[f["key"]] = [c, r]
    return out


class DPOTask(PairStatsTask):
    """Direct preference optimisation of a causal LM; the loss variant comes from DPO_LOSSES.

    Eval metrics: means of eval_loss, reward_accuracy/margin/chosen/rejected and
    logp_chosen/rejected.
    """

    name = "dpo"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        pref = cfg.preference
        self.tokenizer = tokenizer
        self.encoder = PairEncoder(
            tokenizer, cfg.model.max_length, cfg.data.template, pref.max_prompt_length
        )
        self.loss_name = pref.loss
        self.loss_fn = DPO_LOSSES[pref.loss]
        self.params = LossParams(pref.beta, pref.label_smoothing, pref.simpo_gamma)
        self.reference_mode = pref.reference
        self.fingerprint = {"model": cfg.model.name_or_path, "revision": cfg.model.revision}
        self.precompute = False  # decided in prepare_reference, once the model is known
        self.ref_cache: dict[str, list[float]] = {}

    @property
    def needs_reference(self) -> bool:
        """Reference log-probs may be precomputed before the loop."""
        return True

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """Token ids of the prompt and both responses (see tasks/pairs.py for truncation)."""
        return self.encoder.encode(row)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Chosen and rejected in one padded batch (one forward)."""
        return collate_pairs(features, self.tokenizer.pad_token_id)

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
        """Before training: precompute reference log-probs when the reference cannot be had by
        disabling an adapter. Fills features in place and keeps eval rows' values for evaluate.
        With resume, values cached in run_dir are reused (only missing pairs are computed).

        The reference is computed in eval mode and no module is changed: the base model's
        dropout is 0 from load (the task's spec, as TRL does), LoRA dropout stays as configured.
        """
        if self.loss_name in REFERENCE_FREE:
            return
        self.precompute = self.reference_mode == "precompute" or peft_of(model) is None
        if not self.precompute:
            return
        from lmtune.runtime.memory import steady_malloc

        def compute(missing: list[dict[str, Any]]) -> dict[str, list[float]]:
            # steady_malloc: the same buffers every batch (measured: 9.8 s -> 5.9 s for 256
            # HH-RLHF pairs).
            with steady_malloc():
                return compute_reference(model, self, missing, batch_size)

        cache = cached_reference(
            Path(run_dir) / CACHE_FILE,
            self.fingerprint,
            features + encode_all(self.encode, rows),
            compute,
            resume,
            label="reference log-probs",
            unit="pair",
        )
        self.ref_cache = cache
        for f in features:
            f["ref_chosen"], f["ref_rejected"] = cache[f["key"]]

    def _reference(
        self, model: torch.nn.Module, batch: dict[str, Any], n: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.loss_name in REFERENCE_FREE:
            zero = torch.zeros(n, device=batch["input_ids"].device)
            return zero, zero
        if "ref_chosen" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        peft = peft_of(model)
        if peft is None or self.precompute:
            return None
        # The adapter starts as a no-op (LoRA B = 0), so the base model IS the initial policy.
        # Eval mode: the reference is a fixed function, whatever dropout the policy trains with.
        with torch.no_grad(), eval_mode(peft), peft.disable_adapter():
            sums, _ = response_logps(peft, batch)
        return sums[:n], sums[n:]

    # ---- loss and metrics --------------------------------------------------------------
    def pair_stats(self, model: torch.nn.Module, batch: dict[str, Any]) -> PairStats:
        """Per-pair loss, implicit rewards and log-probs for one batch."""
        n = batch["num_pairs"]
        sums, counts = response_logps(model, batch)
        ref = self._reference(model, batch, n)
        stats: PairStats = {"logp_chosen": sums[:n], "logp_rejected": sums[n:]}
        if ref is None:  # no reference known for these rows (e.g. eval of a saved full model)
            return stats
        s = PairLogps(sums[:n], sums[n:], ref[0].to(sums), ref[1].to(sums), counts[:n], counts[n:])
        chosen, rejected = implicit_rewards(s, self.params, self.loss_name)
        return {
            "loss": self.loss_fn(s, self.params),
            "reward_accuracy": chosen > rejected,
            "reward_margin": chosen - rejected,
            "reward_chosen": chosen,
            "reward_rejected": rejected,
            **stats,
        }

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed per-pair loss and the number of pairs."""
        stats = self.pair_stats(model, batch)
        if "loss" not in stats:
            raise RuntimeError(
                "DPO needs reference log-probs: run_training calls "
                "task.prepare_reference before the loop"
            )
        return stats["loss"].sum(), torch.tensor(float(batch["num_pairs"]))

    def eval_features(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Encoded eval rows with their cached reference log-probs when all are known.

        Without a known reference (a full fine-tune evaluated outside its run) evaluate
        reports only the log-prob metrics.
        """
        feats = encode_all(self.encode, rows)
        if self.precompute:
            known = all(f["key"] in self.ref_cache for f in feats)
            for f in feats if known else []:
                f["ref_chosen"], f["ref_rejected"] = self.ref_cache[f["key"]]
        return feats
