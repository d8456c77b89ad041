"""Config sections for evaluation beyond task metrics: baselines, extractive QA decoding,
forgetting (and its mitigation) and the bias audit. config.py adds each as a section of a run
config (`baselines:`, `qa:`, `forgetting:`, `audit:`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmtune.config_base import Strict


class BaselinesConfig(Strict):
    """Zero-/few-shot baselines of the base model beside the fine-tuned one (task classification)."""

    enabled: bool = Field(
        False,
        description="At the end of `lmtune train`, score zero-shot and few-shot baselines of the base model on the test split (the eval split when there is no test split); written to baselines.json and summary.json.",
    )
    shots: int = Field(
        16, ge=1, description="Few-shot examples per class (k), sampled from the training split."
    )
    seeds: int = Field(
        3,
        ge=1,
        description="Few-shot repeats with differently sampled examples; mean and std are reported (k-shot results are noisy).",
    )
    label_descriptions: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Encoders: label -> description text (or a list, averaged) embedded for zero-shot, e.g. {pos: a positive, happy review}; empty: description_template for every label.",
    )
    description_template: str = Field(
        "This text is {label}.",
        description="Encoders: the description used for every label when label_descriptions is empty ({label} is replaced).",
    )
    prompt: str = Field(
        "Text: {text}\nLabel:",
        description="Causal LMs: prompt for one example ({text}, optionally {text_pair}); the label word follows after a space, demonstrations are separated by a blank line.",
    )
    label_words: dict[str, str] = Field(
        default_factory=dict,
        description="Causal LMs: label -> continuation whose log-likelihood is scored, e.g. {'0': negative, '1': positive}; empty: the label itself.",
    )
    scoring: Literal["mean", "sum"] = Field(
        "mean",
        description="Causal LMs: rank labels by the mean (per token, length-normalised) or the sum of their continuation's token log-probabilities.",
    )
    batch_size: int = Field(32, gt=0, description="Sequences per forward pass of the base model.")

    @field_validator("label_descriptions", "label_words", mode="before")
    @classmethod
    def _keys_as_strings(cls, v: Any) -> Any:
        # YAML reads `{0: negative}` with int keys; labels are compared as strings everywhere.
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _placeholders(self) -> BaselinesConfig:
        if "{text}" not in self.prompt:
            raise ValueError(
                "baselines.prompt must contain {text} (example: 'Review: {text}\\nSentiment:')"
            )
        if "{label}" not in self.description_template:
            raise ValueError("baselines.description_template must contain {label}")
        return self


class QAConfig(Strict):
    """Extractive question answering (task qa): windows over long contexts, answer decoding."""

    doc_stride: int = Field(
        128,
        gt=0,
        description="Tokens shared by consecutive windows when a context is longer than model.max_length.",
    )
    max_answer_length: int = Field(
        30, gt=0, description="Longest answer span, in tokens, that decoding may pick."
    )
    n_best: int = Field(
        20,
        gt=0,
        description="Start and end candidates per window that decoding combines into spans.",
    )
    null_threshold: float = Field(
        0.0,
        description="Answer 'no answer' when the null score beats the best span score by more than this (SQuAD v2); eval.json reports the best value as best_f1_thresh.",
    )
    allow_no_answer: bool | None = Field(
        None,
        description="Predict 'no answer' at all (SQuAD v2 behaviour); None: yes when the training data has unanswerable questions.",
    )


class EWCConfig(Strict):
    """Elastic weight consolidation: a Fisher-weighted pull toward the weights before training."""

    weight: float = Field(
        0.0,
        ge=0,
        description="EWC weight lambda: adds lambda * sum F_i (w_i - w0_i)^2 over the trainable weights except a classifier head; F is the diagonal Fisher on the reference, scaled to mean 1 so lambda is on the l2sp scale. 0: off.",
    )
    samples: int = Field(
        256,
        gt=0,
        description="Reference examples (prior-task rows, text chunks for causal LMs, masked tokens for MLM encoders) whose squared loss gradients make the diagonal Fisher; computed once before training.",
    )


class ReplayConfig(Strict):
    """Rehearsal: mix rows of general or previous text into the training data (task sft)."""

    data: str | None = Field(
        None,
        description="Text to replay: .txt/.raw (one row per non-empty line) or jsonl/json/csv/tsv/parquet with a text column; each row trains as a plain-text SFT row (loss on every token).",
    )
    fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the training examples that are replay rows: n_train * fraction / (1 - fraction) rows, sampled with run.seed. 0: off.",
    )


class MitigationConfig(Strict):
    """Ways to forget less, each switchable; forgetting.json records which were on."""

    l2sp: float = Field(
        0.0,
        ge=0,
        description="L2-SP weight alpha: adds alpha * sum (w - w0)^2 over the trainable weights except a classifier head, pulling them toward their values before training. 0: off.",
    )
    ewc: EWCConfig = Field(
        default_factory=EWCConfig,
        description="Elastic weight consolidation (needs forgetting.reference or forgetting.prior).",
    )
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="Replay of general or previous text (task sft only).",
    )


class ForgettingConfig(Strict):
    """Catastrophic forgetting: a reference set measured before and after training, and mitigation."""

    reference: str | None = Field(
        None,
        description="Reference data measured before and after training: general text for causal LMs (perplexity) and MLM encoders (pseudo-perplexity), or labelled rows of the prior task (prior_accuracy; default: the prior run's data/eval.jsonl).",
    )
    prior: str | None = Field(
        None,
        description="The previous classification task: its run folder or model folder, whose head and labels score this model's encoder (task classification or reward); auto: model.name_or_path when it is an lmtune classifier, else nothing to measure.",
    )
    measure: Literal["auto", "perplexity", "pseudo_perplexity", "prior_accuracy"] = Field(
        "auto",
        description="auto: perplexity for causal LMs, prior_accuracy when a prior task is set or found, else pseudo_perplexity (encoders whose checkpoint has an MLM head).",
    )
    max_tokens: int = Field(
        16384,
        gt=0,
        description="Text references: tokens scored (chunks of model.max_length for perplexity, masked positions for pseudo-perplexity); fewer is faster and noisier.",
    )
    limit: int | None = Field(2000, gt=0, description="Most reference rows read (None: all).")
    batch_size: int = Field(16, gt=0, description="Sequences per forward pass when measuring.")
    mitigation: MitigationConfig = Field(
        default_factory=MitigationConfig,
        description="L2-SP, EWC and replay; LoRA (adapter.type lora) is the structural option.",
    )

    def problems(self, task: str, adapter: str) -> list[str]:
        """Combinations that cannot work, as messages naming the keys (checked with the task)."""
        from lmtune.tasks import TASKS

        if task not in TASKS:
            return []  # the task field reports it
        t = TASKS[task]
        causal = t.generates
        m, out = self.mitigation, []
        if (self.prior or self.measure == "prior_accuracy") and t.model not in (
            "classifier",
            "reward",
        ):
            out.append(
                f"forgetting.prior is a classification task measured on a classifier's encoder; "
                f"task {task} cannot use it (use forgetting.reference)"
            )
        if self.measure == "perplexity" and not causal:
            out.append(
                f"forgetting.measure perplexity needs a causal LM; task {task} trains an encoder"
            )
        if self.measure in ("pseudo_perplexity", "prior_accuracy") and causal:
            out.append(
                f"forgetting.measure {self.measure} is for encoders; task {task} trains a causal "
                "LM (use perplexity or auto)"
            )
        if m.ewc.weight > 0 and not (self.reference or self.prior):
            out.append(
                "forgetting.mitigation.ewc needs forgetting.reference or forgetting.prior "
                "(the Fisher is computed on it)"
            )
        if (m.l2sp > 0 or m.ewc.weight > 0) and adapter == "head":
            out.append(
                "forgetting.mitigation l2sp/ewc exclude the task head, which is all that "
                "adapter.type head trains: use adapter.type full or lora"
            )
        if (m.replay.fraction > 0) != bool(m.replay.data):
            out.append(
                "forgetting.mitigation.replay needs both data (a text file) and fraction > 0"
            )
        if m.replay.fraction > 0 and "text" not in t.formats:  # replay rows are plain text
            # A classifier has one head: rows of a previous task (other labels, or the same label
            # names meaning something else) would train this head on that task's labels.
            out.append(
                f"forgetting.mitigation.replay applies to task sft only (task {task}): a "
                "classifier has one head, so replaying a previous task's rows would train it "
                "on that task's labels; use l2sp or ewc, or add same-task rows to data.train"
            )
        return out


class AuditConfig(Strict):
    """Bias audit run by `lmtune train` before and after training (audit.json in the run folder)."""

    enabled: bool = Field(
        False,
        description="Run the bias audit before and after training: CrowS-Pairs for causal LMs, counterfactual term swaps for classifiers (after training only: an untrained head predicts noise).",
    )
    crows: str | None = Field(
        None,
        description="CrowS-Pairs CSV (crows_pairs_anonymized.csv from nyu-mll/crows-pairs) or its folder; None: no CrowS-Pairs.",
    )
    max_pairs: int | None = Field(
        None,
        gt=0,
        description="Score a seeded random sample of this many CrowS-Pairs pairs (None: all).",
    )
    data: str | None = Field(
        None,
        description="Texts for counterfactual probes (jsonl/csv/txt, read with data.columns); None: the eval split, else the test split.",
    )
    worst: int = Field(10, ge=0, description="Largest prediction changes listed in audit.json.")
