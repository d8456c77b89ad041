"""Catastrophic forgetting: measure a reference set before and after training, and mitigate.

What is measured depends on the model being trained:
- causal LMs: token perplexity of reference text, cut into chunks of model.max_length;
- encoders whose checkpoint has an MLM head: pseudo-perplexity (Salazar et al. 2020: mask
  each token in turn, score it from the rest) of reference text;
- classifiers continuing from an earlier classification run (the prior task): accuracy on
  the prior task's rows when this model's encoder is read through the PRIOR run's head.
The result, with absolute and relative change, goes to RUN_DIR/forgetting.json and
summary.json. Mitigation (config forgetting.mitigation): the probes here supply the EWC
Fisher samples and the replay rows mixed into SFT training; train/regularize.py
(start_forgetting) builds the L2-SP/EWC regularizer for the loop.

`overfitting_flags` reads the loop's metrics events and flags a train/eval gap and an eval
loss that rises while the train loss falls.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.runtime.weights import base_of
from lmtune.tasks import TASKS, spec

TEXT_FILES = (".txt", ".raw", ".tokens")


@dataclass
class Probe:
    """One reference measure, runnable on any state of the model being trained."""

    measure: str  # perplexity | pseudo_perplexity | prior_accuracy
    reference: str
    higher_is_better: bool
    score: Callable[[torch.nn.Module], dict[str, float]]  # {"value": ..., details}
    # Per-example reference losses with graphs to the model's weights (the EWC Fisher).
    sample_losses: Callable[[torch.nn.Module, int], Iterator[torch.Tensor]]


def read_texts(path: str, limit: int | None, key: str = "forgetting.reference") -> list[str]:
    """Text rows of a file: lines of .txt/.raw, else the `text` column of jsonl/csv/... rows."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"{key}: no file at {path} (relative paths are relative to the current "
            f"directory {Path.cwd()})"
        )
    if p.is_file() and p.suffix.lower() in TEXT_FILES:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        rows = [ln for ln in lines if ln]
        return rows[:limit] if limit else rows
    from lmtune.data.io import read_file

    texts = []
    for rec in read_file(str(p), "eval", limit):
        value = rec.data.get("text") if isinstance(rec.data, dict) else None
        if not isinstance(value, str):
            raise UserError(
                f"{key}: {path} line {rec.line} has no string field 'text' "
                "(reference text needs a text column, or use a .txt file)"
            )
        if value.strip():
            texts.append(value.strip())
    return texts


def text_chunks(texts: list[str], tokenizer: Any, length: int, max_tokens: int) -> list[list[int]]:
    """Token chunks of at most `length` (BOS first where the tokenizer adds one), max_tokens in all."""
    from lmtune.data.templates import _bos

    bos = _bos(tokenizer)
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    body = length - len(bos)
    chunks = [bos + ids[i : i + body] for i in range(0, len(ids), body)]
    return [c for c in chunks if len(c) > 1]  # a lone token predicts nothing


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()  # no dropout: the measure and the Fisher are deterministic
    try:
        yield
    finally:
        model.train(was)


def perplexity_probe(cfg: Config, tokenizer: Any) -> Probe:
    """Causal LMs: token perplexity of the reference text (chunks of model.max_length)."""
    from lmtune.tasks.sft import SFTTask

    fc = cfg.forgetting
    chunks = text_chunks(
        read_texts(fc.reference, fc.limit), tokenizer, cfg.model.max_length, fc.max_tokens
    )
    if not chunks:
        raise UserError(f"forgetting.reference {fc.reference}: no text to measure")
    lm = SFTTask(tokenizer, "text", cfg.model.max_length)
    feats = [{"input_ids": c, "labels": c, "length": len(c)} for c in chunks]

    def batches(model: torch.nn.Module, size: int) -> Iterator[dict[str, Any]]:
        device = next(model.parameters()).device
        for i in range(0, len(feats), size):
            b = lm.collate(feats[i : i + size])
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}

    def score(model: torch.nn.Module) -> dict[str, float]:
        nll, n = 0.0, 0
        with _eval_mode(model), torch.no_grad():
            for b in batches(model, fc.batch_size):
                tok, _, _ = lm.token_losses(model, b)
                nll, n = nll + float(tok.sum()), n + tok.numel()
        return {"value": math.exp(min(nll / n, 50.0)), "mean_nll": nll / n, "tokens": float(n)}

    def sample_losses(model: torch.nn.Module, samples: int) -> Iterator[torch.Tensor]:
        with _eval_mode(model):
            for b in list(batches(model, 1))[:samples]:
                tok, _, _ = lm.token_losses(model, b)
                yield tok.mean()

    return Probe("perplexity", fc.reference, False, score, sample_losses)


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    base = base_of(model)
    return getattr(base, base.base_model_prefix)


def load_mlm(path: str) -> torch.nn.Module | None:
    """The masked-LM model of a checkpoint, or None when its MLM head weights are absent."""
    from transformers import AutoConfig, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if (
        getattr(AutoConfig.from_pretrained(path), "model_type", None)
        not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        return None
    mlm, info = AutoModelForMaskedLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, output_loading_info=True
    )
    prefix = mlm.base_model_prefix + "."
    # Missing weights outside the backbone = a freshly initialised (random) MLM head.
    return None if any(not k.startswith(prefix) for k in info["missing_keys"]) else mlm


def pseudo_perplexity_probe(cfg: Config, tokenizer: Any, model: torch.nn.Module) -> Probe:
    """Encoders with an MLM head: pseudo-perplexity of the reference text.

    The checkpoint's MLM head reads the trained model's own encoder (the module itself,
    LoRA layers included), with the output embeddings tied to its input embeddings.
    """
    from lmtune.models.load import resolve_model_path

    fc = cfg.forgetting
    path = resolve_model_path(cfg.model.name_or_path)
    mlm = load_mlm(path)
    if mlm is None:
        raise UserError(
            f"forgetting: {cfg.model.name_or_path} has no masked-LM head, so "
            "pseudo-perplexity cannot be measured; set forgetting.prior to an earlier "
            "classification run (prior-task accuracy) instead"
        )
    # Freeze the MLM head first: after the swap its encoder IS the trained model's encoder.
    mlm.requires_grad_(False).to(next(model.parameters()).device)
    setattr(mlm, mlm.base_model_prefix, _backbone(model))
    if getattr(mlm.config, "tie_word_embeddings", True):
        mlm.get_output_embeddings().weight = _backbone(model).get_input_embeddings().weight
    masked: list[tuple[list[int], int]] = []  # (ids, position to mask)
    for text in read_texts(fc.reference, fc.limit):
        enc = tokenizer(
            text, truncation=True, max_length=cfg.model.max_length, return_special_tokens_mask=True
        )
        masked += [(enc["input_ids"], i) for i, s in enumerate(enc["special_tokens_mask"]) if not s]
        if len(masked) >= fc.max_tokens:
            break
    masked = masked[: fc.max_tokens]
    if not masked:
        raise UserError(f"forgetting.reference {fc.reference}: no text to measure")

    def nll(batch: list[tuple[list[int], int]]) -> torch.Tensor:
        device = next(mlm.parameters()).device
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        for r, (row, _) in enumerate(batch):
            ids[r, : len(row)] = torch.tensor(row)
        attn = (
            torch.arange(width)[None, :] < torch.tensor([len(r) for r, _ in batch])[:, None]
        ).long()
        pos = torch.tensor([p for _, p in batch])
        gold = ids[torch.arange(len(batch)), pos].clone()
        ids[torch.arange(len(batch)), pos] = tokenizer.mask_token_id
        logits = mlm(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        picked = logits[torch.arange(len(batch), device=device), pos.to(device)].float()
        return torch.nn.functional.cross_entropy(picked, gold.to(device), reduction="none")

    def score(model: torch.nn.Module) -> dict[str, float]:
        total = 0.0
        with _eval_mode(model), _eval_mode(mlm), torch.no_grad():
            for i in range(0, len(masked), fc.batch_size):
                total += float(nll(masked[i : i + fc.batch_size]).sum())
        mean = total / len(masked)
        return {"value": math.exp(min(mean, 50.0)), "mean_nll": mean, "tokens": float(len(masked))}

    def sample_losses(model: torch.nn.Module, samples: int) -> Iterator[torch.Tensor]:
        picks = random.Random(cfg.run.seed).sample(masked, min(samples, len(masked)))
        with _eval_mode(model), _eval_mode(mlm):
            for item in picks:
                yield nll([item])[0]

    return Probe("pseudo_perplexity", fc.reference, False, score, sample_losses)


def resolve_prior(cfg: Config) -> Path | None:
    """The prior task's model folder: forgetting.prior, or with `auto` model.name_or_path
    when that is an lmtune classification model (None when it is not)."""
    from lmtune.evaluate.run import resolve_model_dir
    from lmtune.models.export import read_meta

    prior = cfg.forgetting.prior
    if prior is None:
        return None
    auto = prior == "auto"
    try:
        model_dir = resolve_model_dir(cfg.model.name_or_path if auto else prior)
    except UserError as exc:
        if auto:
            return None
        raise UserError(f"forgetting.prior: {exc}") from None
    task = read_meta(model_dir).get("task")
    if not (task in TASKS and TASKS[task].labelled):
        if auto:
            return None
        raise UserError(
            f"forgetting.prior: {model_dir} is a {task} model; the prior task must be a "
            "classification run (its head scores the prior task)"
        )
    return model_dir


def _plain_head(module: torch.nn.Module) -> torch.nn.Module:
    """A head module without peft's modules_to_save wrapper (its trained copy)."""
    copies = getattr(module, "modules_to_save", None)
    return copies[module.active_adapters[0]] if copies is not None else module


@contextmanager
def swapped_heads(model: torch.nn.Module, heads: dict[str, torch.nn.Module]) -> Iterator[None]:
    """Run the model with other head modules (the prior task's), then put its own back."""
    base = base_of(model)
    own = {name: getattr(base, name) for name in heads}
    try:
        for name, head in heads.items():
            setattr(base, name, head)
        yield
    finally:
        for name, head in own.items():
            setattr(base, name, head)


def prior_accuracy_probe(
    cfg: Config, tokenizer: Any, model: torch.nn.Module, prior_dir: Path
) -> Probe:
    """Accuracy on the prior task's rows, through the prior run's head on this model's encoder."""
    from lmtune.data.pipeline import read_rows
    from lmtune.evaluate.run import load_for_inference
    from lmtune.models.adapters import head_module_names
    from lmtune.tasks.classification import ClassificationTask

    fc = cfg.forgetting
    prior_model, _, meta, prior_cfg = load_for_inference(prior_dir)
    base = base_of(model)
    names = head_module_names(prior_model)
    if (prior_model.config.model_type, prior_model.config.hidden_size) != (
        base.config.model_type,
        base.config.hidden_size,
    ) or not set(names) <= set(head_module_names(model)):
        raise UserError(
            f"forgetting.prior: {prior_dir} is a {prior_model.config.model_type} model "
            f"(hidden size {prior_model.config.hidden_size}); its head cannot read this "
            f"{base.config.model_type} model: start model.name_or_path from the prior run's model"
        )
    prior_base = base_of(prior_model)
    heads = {n: _plain_head(getattr(prior_base, n)).requires_grad_(False) for n in names}
    for h in heads.values():
        h.to(next(model.parameters()).device)
    reference = fc.reference
    if reference is None:
        reference = str(prior_dir.parent / "data" / "eval.jsonl")
        prior_cfg.data.columns = {}  # the run's own split files hold canonical rows
        if not Path(reference).is_file():
            raise UserError(
                f"forgetting.prior: {prior_dir.parent} has no data/eval.jsonl; set "
                "forgetting.reference to labelled rows of the prior task"
            )
    prior_cfg.data.limit = fc.limit
    rows, rejects = read_rows(reference, prior_cfg)
    if not rows:
        raise UserError(
            f"forgetting.reference {reference}: no rows of the prior task "
            f"({len(rejects)} rejected, e.g. {rejects[0]['reason'] if rejects else 'empty'})"
        )
    clf = ClassificationTask(
        tokenizer, meta["labels"], int(meta.get("max_length") or cfg.model.max_length)
    )

    def score(model: torch.nn.Module) -> dict[str, float]:
        with swapped_heads(model, heads), torch.no_grad():
            m = clf.evaluate(model, rows, fc.batch_size, None)
        return {
            "value": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "eval_loss": m["eval_loss"],
            "rows": float(len(rows)),
        }

    def sample_losses(model: torch.nn.Module, samples: int) -> Iterator[torch.Tensor]:
        device = next(model.parameters()).device
        picks = random.Random(cfg.run.seed).sample(rows, min(samples, len(rows)))
        with swapped_heads(model, heads), _eval_mode(model):
            for row in picks:
                b = clf.collate([clf.encode(row)])
                b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                yield clf.loss(model, b)[0]

    return Probe("prior_accuracy", f"{reference} (head of {prior_dir})", True, score, sample_losses)


def build_probe(cfg: Config, tokenizer: Any, model: torch.nn.Module) -> Probe | None:
    """The configured measure, or None when nothing is to be measured (no reference, no prior)."""
    fc = cfg.forgetting
    if spec(cfg.task).forgetting_kind == "lm":
        return perplexity_probe(cfg, tokenizer) if fc.reference else None
    prior = resolve_prior(cfg)
    if prior is not None and fc.measure in ("auto", "prior_accuracy"):
        return prior_accuracy_probe(cfg, tokenizer, model, prior)
    if fc.measure == "prior_accuracy":
        raise UserError(
            "forgetting.measure prior_accuracy needs forgetting.prior: an earlier "
            "classification run (or auto, with model.name_or_path pointing at its model)"
        )
    return pseudo_perplexity_probe(cfg, tokenizer, model) if fc.reference else None


def replay_features(cfg: Config, tokenizer: Any, n_train: int) -> list[dict[str, Any]]:
    """Plain-text SFT features from forgetting.mitigation.replay.data, fraction of the mix."""
    from lmtune.data.templates import encode_sft_row

    rp = cfg.forgetting.mitigation.replay
    if rp.fraction <= 0 or not rp.data:
        return []
    want = round(n_train * rp.fraction / (1 - rp.fraction))
    texts = read_texts(rp.data, None, "forgetting.mitigation.replay.data")
    random.Random(cfg.run.seed).shuffle(texts)
    feats = []
    for text in texts:
        try:
            feats.append(encode_sft_row({"text": text}, "text", tokenizer, cfg.model.max_length))
        except ValueError:
            continue  # nothing to predict (a single token)
        if len(feats) >= want:
            break
    if len(feats) < want:
        from lmtune.runtime.dist import Dist

        Dist.get().print(
            f"forgetting.mitigation.replay: {rp.data} has {len(feats)} usable rows, "
            f"fewer than the {want} that fraction {rp.fraction} asks for; all are used"
        )
    return feats


@dataclass
class Forgetting:
    """What run_training needs: the before value, the regularizer and the replay features."""

    probe: Probe | None
    before: dict[str, float] | None
    regularizer: Any
    replay: list[dict[str, Any]] = field(default_factory=list)
    mitigation: dict[str, Any] = field(default_factory=dict)

    def finish(self, model: torch.nn.Module, run_dir: Path) -> dict[str, Any]:
        """Measure after training; write and return forgetting.json."""
        result: dict[str, Any] = {"mitigation": self.mitigation}
        if self.probe is None:
            result.update(
                measure=None,
                note="nothing measured: no forgetting.reference and no "
                "prior task found (forgetting.prior)",
            )
        else:
            with torch.random.fork_rng(devices=[]):
                after = self.probe.score(model)
            x, y = self.before["value"], after["value"]
            result = {
                "reference": self.probe.reference,
                "measure": self.probe.measure,
                "before": x,
                "after": y,
                "abs_change": y - x,
                "rel_change": (y - x) / x if x else None,
                "higher_is_better": self.probe.higher_is_better,
                **result,
                "details": {"before": self.before, "after": after},
            }
        (Path(run_dir) / "forgetting.json").write_text(json.dumps(result, indent=2))
        return result


def forgetting_on(cfg: Config) -> bool:
    """Whether the run measures or mitigates forgetting at all."""
    fc, m = cfg.forgetting, cfg.forgetting.mitigation
    return bool(fc.reference or fc.prior or m.l2sp > 0 or m.ewc.weight > 0 or m.replay.fraction > 0)


def overfitting_flags(
    events: list[dict[str, Any]], rising_evals: int = 3, gap_tolerance: float = 0.5
) -> dict[str, Any]:
    """Overfitting signs in metrics.jsonl events: the train/eval loss gap and a rising eval loss.

    The train loss at an evaluation is the last logged train loss at or before its step.
    gap = eval_loss - train_loss. Flags: `large_gap` when the final gap exceeds gap_tolerance
    x the final train loss and is wider than at the best eval; `eval_loss_rising` when the eval
    loss rose over `rising_evals` consecutive evaluations while the train loss fell.
    """
    # Keyed by step, the last entry wins: a resumed run logs the steps after its checkpoint twice.
    train = sorted(
        {e["step"]: e["loss"] for e in events if e.get("event") == "train" and "loss" in e}.items()
    )
    evals = sorted(
        {
            e["step"]: e["eval_loss"]
            for e in events
            if e.get("event") == "eval" and "eval_loss" in e
        }.items()
    )
    points = []
    for step, ev in evals:
        before = [loss for s, loss in train if s <= step]
        if before and math.isfinite(ev):
            points.append(
                {"step": step, "train_loss": before[-1], "eval_loss": ev, "gap": ev - before[-1]}
            )
    if not points:
        return {"flags": [], "evaluations": 0}
    best = min(points, key=lambda p: p["eval_loss"])
    end = points[-1]
    streak, longest, start = 0, (0, None, None), points[0]
    for prev, cur in pairwise(points):
        if cur["eval_loss"] > prev["eval_loss"] and cur["train_loss"] < prev["train_loss"]:
            if streak == 0:
                start = prev
            streak += 1
            if streak > longest[0]:
                longest = (streak, start["step"], cur["step"])
        else:
            streak = 0
    flags = []
    if end["gap"] > gap_tolerance * abs(end["train_loss"]) and end["gap"] > best["gap"]:
        flags.append(
            f"large_gap: eval loss {end['eval_loss']:.4f} vs train loss {end['train_loss']:.4f} "
            f"at step {end['step']} (gap {end['gap']:.4f}, {best['gap']:.4f} at the best eval)"
        )
    if longest[0] >= rising_evals:
        flags.append(
            f"eval_loss_rising: eval loss rose over {longest[0]} evaluations while train loss "
            f"fell (steps {longest[1]}-{longest[2]})"
        )
    return {
        "flags": flags,
        "evaluations": len(points),
        "best_step": best["step"],
        "gap_at_best": best["gap"],
        "gap_at_end": end["gap"],
        "longest_rise": {"evaluations": longest[0], "from_step": longest[1], "to_step": longest[2]},
    }
