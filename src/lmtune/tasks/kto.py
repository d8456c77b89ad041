"""KTO on a causal LM: alignment from completions marked desirable or undesirable (no pairs).

Data: unpaired rows {prompt, completion, label} (label true = desirable; prompt as text or
messages, completion as text or an assistant message), or preference pairs of any format,
each becoming two rows: chosen -> desirable, rejected -> undesirable.

The KL reference point (losses/kto.py) is estimated from mismatched pairs: every example
also carries the completion of another example with a different prompt, fixed once per
feature list like TRL's shifted KL dataset (so it can be precomputed under the reference).

Reference, as for DPO: LoRA/DoRA -> the policy with its adapter disabled (one extra no-grad
forward per step); full/head fine-tuning (or kto.reference: precompute) -> log-probs of every
train/eval/test example computed once before training, cached in RUN_DIR/kto_reference.json
for --resume. Reference passes run in eval mode.

Metrics: eval_loss (with z0 estimated over the whole eval set), kl, reward_desirable and
reward_undesirable (beta * log-ratio), label_accuracy (reward > 0 exactly for desirable rows)
and, for rows that came as pairs, reward_accuracy (chosen reward > rejected reward, DPO's
held-out metric).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lmtune.config_base import Strict
from lmtune.data.collate import IGNORE, pad_batch
from lmtune.data.formats import RowError, label_str
from lmtune.data.preference import _explicit, _field, _last_turn
from lmtune.losses.kto import KTOParams, kl_reference_point, kto_losses
from lmtune.tasks.base import Task, eval_mode
from lmtune.tasks.pairs import (
    PairEncoder,
    cached_reference,
    keep_end,
    pair_key,
    response_logps,
    to_device,
)
from lmtune.tasks.rollout import peft_of

CACHE_FILE = "kto_reference.json"
_TRUE, _FALSE = {"true", "1", "yes", "desirable"}, {"false", "0", "no", "undesirable"}


class KTOConfig(Strict):
    """The kto: section of a config (task kto)."""

    beta: float = Field(0.1, gt=0, description="Temperature of the implicit reward (TRL beta).")
    desirable_weight: float = Field(
        1.0, gt=0, description="Loss weight of desirable rows (lambda_D)."
    )
    undesirable_weight: float = Field(
        1.0,
        gt=0,
        description="Loss weight of undesirable rows (lambda_U); the paper keeps lambda_D * n_D / (lambda_U * n_U) in [1, 4/3].",
    )
    max_prompt_length: int | None = Field(
        None, gt=0, description="Prompt tokens kept (its end) before the completion; None: all."
    )
    reference: Literal["auto", "precompute"] = Field(
        "auto",
        description="auto: LoRA/DoRA use the base (adapter disabled), full fine-tuning precomputes; precompute: always precompute.",
    )


def unpaired_row(raw: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """{prompt, completion, label: bool} from a user row; RowError naming the bad field."""
    prompt = _field(raw, "prompt", mapping)
    completion = _field(raw, "completion", mapping)
    if isinstance(completion, list):
        completion = _last_turn(completion, "completion")
    prompt, completion, _ = _explicit(prompt, completion, completion)
    if not completion.strip():
        raise RowError("field 'completion' is empty")
    value = raw.get(mapping.get("label", "label"))
    if isinstance(value, bool):
        return {"prompt": prompt, "completion": completion, "label": value}
    text = label_str(value).lower()  # RowError for null, lists, NaN
    if text not in _TRUE | _FALSE:
        raise RowError(
            f"field 'label' must be true or false (desirable or not), got {value!r}",
            "field 'label' is not true/false",
        )
    return {"prompt": prompt, "completion": completion, "label": text in _TRUE}


def _group(row: dict[str, Any]) -> str:
    """A stable id of a preference row: its two features are scored as a pair in evaluation."""
    text = json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


class KTOTask(Task):
    """Kahneman-Tversky optimisation of a causal LM; loss exactly as TRL's KTOTrainer."""

    name = "kto"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        k = cfg.section("kto")
        self.tokenizer, self.max_length = tokenizer, cfg.model.max_length
        self.encoder = PairEncoder(tokenizer, cfg.model.max_length, cfg.data.template)
        self.max_prompt = k.max_prompt_length
        self.params = KTOParams(k.beta, k.desirable_weight, k.undesirable_weight)
        self.reference_mode = k.reference
        self.fingerprint = {"model": cfg.model.name_or_path, "revision": cfg.model.revision}
        self.precompute = False  # decided in prepare_reference, once the model is known
        self.ref_cache: dict[str, list[float]] = {}
        self._pool: list[dict[str, Any]] = []  # training features: held-out KL completions

    # ---- data --------------------------------------------------------------------------
    def _one(self, prompt: Any, completion: str, label: bool, group: str | None) -> dict[str, Any]:
        pids, cids, _ = self.encoder.prompt_and_responses(
            {"prompt": prompt, "chosen": completion, "rejected": completion}
        )
        bos = self.tokenizer.bos_token_id
        keep = 1 if bos is not None and pids[:1] == [bos] else 0
        if self.max_prompt is not None:
            pids = keep_end(pids, self.max_prompt, keep)
        room = self.max_length - len(pids)
        if room < 1 or not cids:
            raise ValueError(
                f"the prompt has {len(pids)} tokens: no room for a completion within "
                f"model.max_length={self.max_length}; raise model.max_length or set "
                "kto.max_prompt_length (prompts then keep their last tokens)"
            )
        feat: dict[str, Any] = {"prompt_ids": pids, "completion_ids": cids[:room], "label": label}
        feat["length"] = len(pids) + len(cids[:room])
        return {**feat, "group": group} if group else feat

    def encode(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """One feature per unpaired row; two (desirable, undesirable) per preference pair."""
        if "completion" in row:
            return [self._one(row["prompt"], row["completion"], bool(row["label"]), None)]
        group = _group(row)
        return [
            self._one(row["prompt"], row["chosen"], True, group),
            self._one(row["prompt"], row["rejected"], False, group),
        ]

    def prepare_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Training features: each gets the completion of the nearest earlier feature with
        another prompt (cyclically: TRL shifts by one) as its mismatched KL completion. The
        training completions are kept as the pool that held-out features draw theirs from."""
        self._pool = [f for f in features if f.get("completion_ids")]
        return self._pair(features, features, shift=True)

    def _pair(
        self, features: list[dict[str, Any]], pool: list[dict[str, Any]], shift: bool
    ) -> list[dict[str, Any]]:
        """Set kl_ids and key. shift: from the previous entries of pool (= features); else
        from pool at a place fixed by the feature's own content, so a held-out feature gets
        the same KL completion whichever split or list it is evaluated in."""
        n = len(pool)
        for i, f in enumerate(features):
            if shift:
                start = i - 1
            else:
                digest = hashlib.sha1(json.dumps([f["prompt_ids"], f["completion_ids"]]).encode())
                start = int(digest.hexdigest()[:8], 16)
            j = next(
                (
                    (start - k) % n
                    for k in range(n)
                    if pool[(start - k) % n]["prompt_ids"] != f["prompt_ids"]
                ),
                start % n,
            )
            room = self.max_length - len(f["prompt_ids"])
            f["kl_ids"] = pool[j]["completion_ids"][:room]
            f["key"] = pair_key(
                f["prompt_ids"], f["completion_ids"], f["kl_ids"], [int(f["label"])]
            )
        return features

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """The matched sequences and the mismatched (KL) ones, each padded on its own."""
        pad = self.tokenizer.pad_token_id
        batch: dict[str, Any] = {}
        for prefix, key in (("", "completion_ids"), ("kl_", "kl_ids")):
            seqs = [
                {
                    "input_ids": f["prompt_ids"] + f[key],
                    "labels": [IGNORE] * len(f["prompt_ids"]) + f[key],
                }
                for f in features
            ]
            part = pad_batch(seqs, pad, keys=("input_ids", "labels"))
            batch.update({prefix + k: v for k, v in part.items()})
        n = len(features)
        batch["desirable"] = torch.tensor([bool(f["label"]) for f in features])
        batch.update(num_units=n, num_examples=n, num_tokens=int(batch["attention_mask"].sum()))
        if all("ref_logp" in f for f in features):
            batch["ref_logp"] = torch.tensor([f["ref_logp"] for f in features])
            batch["ref_kl_logp"] = torch.tensor([f["ref_kl_logp"] for f in features])
        return batch

    # ---- reference ---------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        """Reference log-probs may be precomputed before the loop."""
        return True

    def prepare_reference(
        self,
        model: torch.nn.Module,
        features: list[dict[str, Any]],
        rows: list[dict[str, Any]],
        run_dir: Path,
        batch_size: int,
        resume: bool = False,
    ) -> None:
        """Precompute the reference log-probs of every train and held-out example when no
        adapter can be disabled (or kto.reference: precompute); cached for --resume."""
        self.precompute = self.reference_mode == "precompute" or peft_of(model) is None
        if not self.precompute:
            return
        cache = cached_reference(
            Path(run_dir) / CACHE_FILE,
            self.fingerprint,
            features + self._encoded(rows),
            lambda missing: self._reference_values(model, missing, batch_size),
            resume,
            label="KTO reference log-probs",
            unit="example",
        )
        self.ref_cache = cache
        for f in features:
            f["ref_logp"], f["ref_kl_logp"] = cache[f["key"]]

    @torch.no_grad()
    def _reference_values(
        self, model: torch.nn.Module, feats: list[dict[str, Any]], batch_size: int
    ) -> dict[str, list[float]]:
        device = next(model.parameters()).device
        out: dict[str, list[float]] = {}
        feats = sorted(feats, key=lambda f: f["length"])
        for i in range(0, len(feats), batch_size):
            chunk = feats[i : i + batch_size]
            ref, ref_kl = self._reference(model, to_device(self.collate(chunk), device), live=True)
            for f, a, b in zip(chunk, ref.tolist(), ref_kl.tolist(), strict=True):
                out[f["key"]] = [a, b]
        return out

    def _reference(
        self, model: torch.nn.Module, batch: dict[str, Any], live: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the matched and the mismatched completions: cached in the
        batch, or computed now in eval mode (adapter disabled when there is one)."""
        if "ref_logp" in batch and not live:
            return batch["ref_logp"], batch["ref_kl_logp"]
        peft = peft_of(model)
        if not live and (peft is None or self.precompute):
            raise RuntimeError(
                "KTO needs reference log-probs: run_training calls task.prepare_reference "
                "before the loop"
            )
        target = peft if peft is not None else model
        with torch.no_grad(), eval_mode(target):
            if peft is not None:
                with peft.disable_adapter():
                    return self._sums(target, batch, ""), self._sums(target, batch, "kl_")
            return self._sums(target, batch, ""), self._sums(target, batch, "kl_")

    @staticmethod
    def _sums(model: torch.nn.Module, batch: dict[str, Any], prefix: str) -> torch.Tensor:
        part = {k: batch[prefix + k] for k in ("input_ids", "attention_mask", "labels")}
        return response_logps(model, part)[0]

    # ---- loss and metrics --------------------------------------------------------------
    def _stats(
        self, model: torch.nn.Module, batch: dict[str, Any], kl: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logps = self._sums(model, batch, "")
        ref, ref_kl = self._reference(model, batch)
        if kl is None:  # z0 of this micro-batch over all processes (TRL gathers it too)
            from lmtune.runtime.dist import Dist

            with torch.no_grad():
                policy_kl = self._sums(model, batch, "kl_")
                kl = kl_reference_point(policy_kl, ref_kl.to(logps), Dist.get().all_sum_tensor)
        desirable = batch["desirable"].to(logps.device)
        losses, rewards = kto_losses(logps, ref.to(logps), desirable, kl, self.params)
        return {"loss": losses, "reward": rewards, "logp": logps.detach(), "kl": kl}

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed per-example KTO loss and the number of examples (the loop takes the mean)."""
        return self._stats(model, batch)["loss"].sum(), torch.tensor(float(batch["num_units"]))

    def _encoded(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Outside a training run (`lmtune eval`) the rows' own completions are the pool.
        feats = super().eval_features(rows)
        return self._pair(feats, self._pool or feats, shift=not self._pool)

    def eval_features(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Encoded rows with their mismatched completions and cached reference values."""
        feats = self._encoded(rows)
        if self.precompute and all(f["key"] in self.ref_cache for f in feats):
            for f in feats:
                f["ref_logp"], f["ref_kl_logp"] = self.ref_cache[f["key"]]
        return feats

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, float]:
        """Metrics over every example that encodes, with z0 estimated over the whole set."""
        feats = sorted(self.eval_features(rows), key=lambda f: f["length"])
        if not feats:
            return {"eval_examples": 0.0}
        device = next(model.parameters()).device
        if peft_of(model) is None and not all("ref_logp" in f for f in feats):
            # No reference known (a full fine-tune evaluated outside its run): log-probs only.
            with eval_mode(model):
                logps = [
                    self._sums(
                        model, to_device(self.collate(feats[i : i + batch_size]), device), ""
                    )
                    for i in range(0, len(feats), batch_size)
                ]
            return {"logp": float(torch.cat(logps).mean()), "eval_examples": float(len(feats))}
        with eval_mode(model):
            parts: dict[str, list[torch.Tensor]] = {"logp": [], "ref": [], "pkl": [], "rkl": []}
            for i in range(0, len(feats), batch_size):
                batch = to_device(self.collate(feats[i : i + batch_size]), device)
                ref, ref_kl = self._reference(model, batch)
                parts["logp"].append(self._sums(model, batch, "").float().cpu())
                parts["pkl"].append(self._sums(model, batch, "kl_").float().cpu())
                parts["ref"].append(ref.float().cpu())
                parts["rkl"].append(ref_kl.float().cpu())
        cat = {k: torch.cat(v) for k, v in parts.items()}
        desirable = torch.tensor([bool(f["label"]) for f in feats])
        kl = kl_reference_point(cat["pkl"], cat["rkl"])
        losses, rewards = kto_losses(cat["logp"], cat["ref"], desirable, kl, self.params)
        out = {
            "eval_loss": float(losses.mean()),
            "kl": float(kl),
            "label_accuracy": float(((rewards > 0) == desirable).float().mean()),
            "eval_examples": float(len(feats)),
        }
        for name, mask in (("reward_desirable", desirable), ("reward_undesirable", ~desirable)):
            if mask.any():
                out[name] = float(rewards[mask].mean())
        pairs: dict[str, dict[bool, float]] = {}
        for f, r in zip(feats, rewards.tolist(), strict=True):
            if "group" in f:
                pairs.setdefault(f["group"], {})[bool(f["label"])] = r
        full = [p for p in pairs.values() if len(p) == 2]
        if full:
            out["reward_accuracy"] = sum(p[True] > p[False] for p in full) / len(full)
            out["reward_margin"] = sum(p[True] - p[False] for p in full) / len(full)
            out["eval_pairs"] = float(len(full))
        return out
