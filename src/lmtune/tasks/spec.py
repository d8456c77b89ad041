"""What a task is, as data: the spec every task registers in tasks/__init__.py.

A spec answers the questions the rest of lmtune used to answer by comparing task names:
which model to load (and so which peft task type), which row formats the task reads, which
config section it owns, which metric picks its best checkpoint, and what a saved model of
it can do (generate, predict, be served, be audited, how forgetting is measured).

Specs hold strings, not classes, so that reading the registry imports no task module (the
CLI starts fast and config validation stays cheap); `load_object` imports on first use.
A task may declare its own row formats (`RowFormat`) and config section (`section_model`):
data/formats.py and config.py read them from here, so a new method touches no other module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["causal", "classifier", "reward", "span"]
# peft's TaskType member for each model kind (models/adapters.py maps it to the enum).
PEFT_TASK_TYPES: dict[str, str] = {
    "causal": "CAUSAL_LM",
    "classifier": "SEQ_CLS",
    "reward": "SEQ_CLS",
    "span": "QUESTION_ANS",
}


@dataclass(frozen=True)
class RowFormat:
    """A row format a task declares for its own data (the built-in ones live in data/formats.py).

    `normalize` names a function `(raw_row, mapping) -> canonical row` that raises
    data.formats.RowError naming the bad field; `content` lists the canonical fields whose
    text is cleaned, deduplicated and measured (a field may hold a list of messages).
    """

    name: str
    required: tuple[str, ...]
    content: tuple[str, ...]
    normalize: str  # "module:function"
    example: str  # a data.columns example for error messages
    doc: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One task: everything outside tasks/ may ask about it, by name."""

    name: str
    target: str  # "module:Class", the Task subclass (imported on first build)
    model: ModelKind  # what models/load.py builds
    formats: tuple[str, ...]  # accepted data.format values (besides auto), first = the default
    metric: tuple[str, str]  # (metric, min|max) that best describes a trained model
    description: str  # what a model of this task does (config help, model card)
    section: str | None = None  # the config section it reads (preference, rlhf, qa, ...)
    section_model: str | None = None  # "module:Class" for a section the task module declares
    row_formats: tuple[RowFormat, ...] = ()
    predicts: bool = False  # `lmtune predict` (labels or answers for rows)
    labelled: bool = False  # learns string labels (class weights, label balance, baselines)
    packs: bool = False  # data.packing applies
    ties: bool = False  # preference ties are targets (0.5), not dropped
    own_loss: bool = False  # reads preference.* but has its own loss (preference.loss unused)
    serve: Literal["causal", "classifier"] | None = None  # what `lmtune serve` exposes
    # The base model's dropout when model.dropout is None (None: the checkpoint's). dpo and
    # rlhf use 0, TRL's default: a policy with dropout would not equal its reference at step
    # 0. Set at load, before the adapter exists, so LoRA dropout (adapter.dropout) still holds.
    base_dropout: float | None = None

    @property
    def generates(self) -> bool:
        """A causal LM: `lmtune generate`, feedback completions, perplexity forgetting."""
        return self.model == "causal"

    @property
    def peft_task_type(self) -> str:
        """peft's TaskType name for LoRA/DoRA on this task's model."""
        return PEFT_TASK_TYPES[self.model]

    @property
    def audit_kind(self) -> str | None:
        """How a bias audit reads a model of this task: causal LM, classifier, or not at all."""
        return {"causal": "causal", "classifier": "classifier"}.get(self.model)

    @property
    def forgetting_kind(self) -> str:
        """How forgetting is measured: perplexity of a causal LM, or the encoder's probes."""
        return "lm" if self.model == "causal" else "encoder"


def load_object(ref: str) -> Any:
    """The object named by "package.module:attr" (imports the module)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
