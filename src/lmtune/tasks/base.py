"""The one interface every task implements; the training loop and `eval` know only this.

A task turns canonical rows into features, features into batches, batches into a summed
loss, and a model plus rows into metrics. Losses are returned as (sum, units) so the loop can
normalise by the true number of units (tokens for SFT, examples for classification) across
all micro-batches of an optimizer step and across processes.

Besides those four, a task has a lifecycle that the recipes (train/run.py, evaluate/run.py)
and the loop call unconditionally, in this order; the defaults here do nothing, so a task
overrides only the steps it needs (nothing probes a task with hasattr):

  from_config          build from the config and what data preparation found
  observe_train        see the training rows (qa: are there unanswerable questions?)
  model_meta           settings saved with the model that eval/predict must reuse
  prepare_features     rework the encoded training features (sft: packing)
  prepare_reference    before the loop (and before a resume loads its checkpoint): a frozen
                       reference (dpo: precomputed log-probs; rlhf: a frozen copy)
  begin_step           at the start of every optimizer step (rlhf: rollout boundaries)
  step_metrics         extra statistics of the steps since the last call (rlhf: reward, KL)
  eval_features        encoded eval rows (dpo: with their cached reference log-probs)
  predict_rows         `lmtune predict`: one record per row (labels, answers)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import UserError


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for a reference pass (dropout off), every module's own training
    flag restored afterwards. Nothing else is changed: dropout stays as configured for training."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


@dataclass(frozen=True)
class TaskInputs:
    """What data preparation (or a saved model's metadata) tells a task at construction."""

    labels: list[str] | None = None
    label_weights: list[float] | None = None
    format: str | None = None


class Task:
    """Base of every task: the four required members, and lifecycle steps that default to no-ops."""

    #: The registry name (tasks/__init__.py); the spec holds everything else about the task.
    name: str = ""

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: Any, inputs: TaskInputs) -> Task:
        """Build the task; most tasks read only the tokenizer and the config."""
        return cls(tokenizer, cfg)  # type: ignore[call-arg]  # subclasses define __init__

    @property
    def default_metric(self) -> tuple[str, str]:
        """(metric, min|max) from the task's spec."""
        from lmtune.tasks import spec

        return spec(self.name).metric

    # ---- required -------------------------------------------------------------------------
    def encode(self, row: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Tokenize one canonical row into a feature dict (lists of ints plus 'length'), or a
        list of them when one row makes several (extractive QA: one per context window)."""
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad/pack features into a batch of tensors (includes 'num_units')."""
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss over the batch and the number of units it sums over."""
        raise NotImplementedError

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Metrics on rows (eval_loss included); may write details (errors.jsonl) to out_dir."""
        raise NotImplementedError

    # ---- lifecycle (no-op defaults) -------------------------------------------------------
    def encode_batch(
        self, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any] | list[dict[str, Any]] | ValueError]:
        """encode over a batch of rows (the Arrow encoding calls this); a row that cannot be
        encoded gives its ValueError in its place. A task may tokenize the batch in one call."""
        out: list[dict[str, Any] | list[dict[str, Any]] | ValueError] = []
        for row in rows:
            try:
                out.append(self.encode(row))
            except ValueError as exc:
                out.append(exc)
        return out

    def observe_train(self, rows: list[dict[str, Any]]) -> None:
        """See the canonical training rows before anything is encoded."""

    def model_meta(self) -> dict[str, Any]:
        """Entries saved in the model's lmtune.json beside the generic ones."""
        return {}

    def prepare_features(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The training features as the loop should see them (default: unchanged)."""
        return features

    def prepare_reference(
        self,
        model: torch.nn.Module,
        features: list[dict[str, Any]],
        rows: list[dict[str, Any]],
        run_dir: Path,
        batch_size: int,
        resume: bool = False,
    ) -> None:
        """Before training: set up a reference model or reference values (model on its device)."""

    @property
    def needs_reference(self) -> bool:
        """Whether prepare_reference does work (the recipe then moves the model first)."""
        return False

    def begin_step(self, step: int) -> None:
        """The loop is about to run optimizer step `step` (0-based): its micro-batches follow."""

    def step_metrics(self) -> dict[str, float]:
        """Statistics of the optimizer steps since the last call, averaged by the loop's log."""
        return {}

    #: True when evaluation splits exactly over processes: eval_partial scores a share of the
    #: rows on each process and eval_merge turns every process's share into the metrics.
    shards_eval: bool = False

    def eval_partial(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> Any:
        """What this process contributes to a sharded evaluation (tasks with shards_eval)."""
        raise NotImplementedError(f"task {self.name} does not shard its evaluation")

    def eval_merge(self, parts: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Metrics from every process's eval_partial, in rank order (tasks with shards_eval)."""
        raise NotImplementedError(f"task {self.name} does not shard its evaluation")

    def eval_features(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The features evaluation runs on (default: every row that encodes)."""
        feats: list[dict[str, Any]] = []
        for r in rows:
            try:
                enc = self.encode(r)
            except ValueError:  # the data step would have rejected it (no room for a response)
                continue
            feats.extend(enc if isinstance(enc, list) else [enc])
        return feats

    def predict_rows(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> list[dict[str, Any]]:
        """`lmtune predict`: one output record per row; tasks whose spec says predicts=True."""
        raise UserError(
            f"task {self.name} has no predict (use `lmtune generate` for causal LMs, "
            "`lmtune score` for reward models)"
        )
