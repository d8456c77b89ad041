"""Tasks: one module per training objective, each registered here as one TaskSpec.

The registry is the single source of truth about tasks: every module that needs to know what
a task loads, reads, owns or can do asks `spec(name)` instead of comparing names. Reading it
imports no task module; `build_task` imports the one it builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmtune.tasks.spec import RowFormat, TaskSpec, load_object

if TYPE_CHECKING:
    from lmtune.tasks.base import Task

PAIRS = ("preference", "pairwise", "dialogue_pair")

# The registry: add a task by adding one TaskSpec here (its module is imported on first use).
SPECS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "classification",
        "lmtune.tasks.classification:ClassificationTask",
        "classifier",
        ("classification", "pair_classification"),
        ("accuracy", "max"),
        "assigns one of the labels {labels} to a text (or text pair)",
        predicts=True,
        labelled=True,
        serve="classifier",
    ),
    TaskSpec(
        "sft",
        "lmtune.tasks.sft:SFTTask",
        "causal",
        ("chat", "instruction", "text"),
        ("eval_loss", "min"),
        "continues prompts in the style of its {fmt} training data (supervised fine-tuning)",
        packs=True,
        serve="causal",
    ),
    TaskSpec(
        "reward",
        "lmtune.tasks.reward:RewardTask",
        "reward",
        PAIRS,
        ("pairwise_accuracy", "max"),
        "scores a (prompt, response) pair; higher means more preferred (reward model)",
        section="preference",
        ties=True,
        own_loss=True,
    ),
    TaskSpec(
        "dpo",
        "lmtune.tasks.dpo:DPOTask",
        "causal",
        PAIRS,
        ("eval_loss", "min"),
        "generates responses tuned towards the preferred answers of its preference pairs (DPO)",
        section="preference",
        serve="causal",
        base_dropout=0.0,
    ),
    TaskSpec(
        "orpo",
        "lmtune.tasks.orpo:ORPOTask",
        "causal",
        PAIRS,
        ("eval_loss", "min"),
        "generates responses tuned on preference pairs (ORPO)",
        section="preference",
        own_loss=True,
        serve="causal",
    ),
    TaskSpec(
        "rlhf",
        "lmtune.tasks.rlhf:RLHFTask",
        "causal",
        ("prompt",),
        ("eval_loss", "min"),
        "generates responses optimised for a reward (online RL)",
        section="rlhf",
        serve="causal",
        base_dropout=0.0,
    ),
    TaskSpec(
        "kto",
        "lmtune.tasks.kto:KTOTask",
        "causal",
        ("unpaired", *PAIRS),
        ("eval_loss", "min"),
        "generates responses tuned towards completions marked desirable (KTO)",
        section="kto",
        section_model="lmtune.tasks.kto:KTOConfig",
        row_formats=(
            RowFormat(
                "unpaired",
                ("prompt", "completion", "label"),
                ("prompt", "completion"),
                "lmtune.tasks.kto:unpaired_row",
                "{prompt: question, completion: answer, label: is_good}",
            ),
        ),
        serve="causal",
        base_dropout=0.0,
    ),
    TaskSpec(
        "qa",
        "lmtune.tasks.qa:QATask",
        "span",
        ("qa",),
        ("f1", "max"),
        "extracts the answer span to a question from a given context (extractive QA)",
        section="qa",
        predicts=True,
    ),
)
TASKS: dict[str, TaskSpec] = {s.name: s for s in SPECS}


def spec(name: str) -> TaskSpec:
    """The spec of task `name`; ValueError naming the known tasks for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def names() -> tuple[str, ...]:
    """Every registered task name, in registry order."""
    return tuple(TASKS)


def causal_tasks() -> tuple[str, ...]:
    """Tasks whose model is a causal LM (for messages that list them)."""
    return tuple(s.name for s in SPECS if s.generates)


def row_formats() -> dict[str, RowFormat]:
    """Row formats declared by task modules (format name -> declaration)."""
    return {f.name: f for s in SPECS for f in s.row_formats}


def section_owners() -> dict[str, list[str]]:
    """Config section -> the tasks that read it."""
    out: dict[str, list[str]] = {}
    for s in SPECS:
        if s.section:
            out.setdefault(s.section, []).append(s.name)
    return out


def section_models() -> dict[str, str]:
    """Config sections that task modules declare themselves: section -> "module:Class"."""
    return {s.section: s.section_model for s in SPECS if s.section and s.section_model}


def build_task(
    name: str,
    tokenizer: Any,
    cfg: Any,
    labels: list[str] | None = None,
    label_weights: list[float] | None = None,
    fmt: str | None = None,
) -> Task:
    """The task object for `name`, built by its class's `from_config`."""
    from lmtune.tasks.base import TaskInputs

    cls = load_object(spec(name).target)
    return cls.from_config(tokenizer, cfg, TaskInputs(labels, label_weights, fmt))


__all__ = ["SPECS", "TASKS", "RowFormat", "TaskSpec", "build_task", "spec"]
