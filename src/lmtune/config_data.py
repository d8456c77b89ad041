"""The `data:` section of a run config: inputs, row format, cleaning, splitting, leakage,
balancing and the data cache. config.py adds it as a section of a run config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmtune.config_base import Strict
from lmtune.tasks import row_formats

# Row formats data/formats.py reads; tasks may declare more (their specs' row_formats).
BUILTIN_FORMATS = (
    "text",
    "instruction",
    "chat",
    "classification",
    "pair_classification",
    "preference",
    "pairwise",
    "dialogue_pair",
    "prompt",
    "qa",
)
PREFERENCE_FORMATS = ("preference", "pairwise", "dialogue_pair")


def format_names() -> tuple[str, ...]:
    """Every data.format value: auto, the built-in formats, and those tasks declare."""
    return ("auto", *BUILTIN_FORMATS, *row_formats())


class NearDedupeConfig(Strict):
    enabled: bool = Field(False, description="Remove near-duplicates (MinHash over word shingles).")
    threshold: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity at or above which rows are near-duplicates.",
    )
    shingle: int = Field(5, gt=0, description="Words per shingle.")
    num_perm: int = Field(64, gt=0, description="MinHash permutations (more: slower, more exact).")


PiiMode = Literal["detect", "redact", "off"]


class CleanConfig(Strict):
    normalize: bool = Field(True, description="Unicode NFC and whitespace normalisation.")
    control_chars: bool = Field(
        True, description="Remove control characters (keeps newlines and tabs)."
    )
    dedupe: bool = Field(True, description="Drop exact duplicate rows (after normalisation).")
    near_dedupe: NearDedupeConfig = Field(
        default_factory=NearDedupeConfig, description="Near-duplicate removal."
    )
    min_chars: int = Field(1, ge=0, description="Drop rows whose main text is shorter than this.")
    max_chars: int | None = Field(
        None, description="Drop rows whose main text is longer than this (None: no limit)."
    )
    pii: PiiMode = Field(
        "detect",
        description="Emails, phone numbers, IPs, credit cards (Luhn) and URLs: detect (count and report them, text unchanged), redact (replace with placeholders) or off. true means redact, false off.",
    )
    secrets: PiiMode = Field(
        "detect",
        description="API keys, access tokens and private-key blocks: detect, redact or off (as pii).",
    )

    @field_validator("pii", "secrets", mode="before")
    @classmethod
    def _bool_mode(cls, v: Any) -> Any:
        # Older configs said `pii: true` (which redacted) or false.
        return {True: "redact", False: "off"}.get(v, v) if isinstance(v, bool) else v


class SplitConfig(Strict):
    eval: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows for the eval split when no eval file is given.",
    )
    test: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows for the test split when no test file is given.",
    )
    stratify: bool = Field(
        True, description="Keep label proportions equal across splits (classification)."
    )
    max_eval_rows: int | None = Field(
        2000,
        gt=0,
        description="Cap on the eval split taken out of train (the rest stays in train; said on the console); None: no cap. An eval file is never capped.",
    )
    group_by: str | None = Field(
        None,
        description="Column whose rows stay together in one split (e.g. title: no article in two splits); eval/test take whole groups in a seeded order until they hold their share of rows; not stratified.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.eval + self.test >= 1.0:
            raise ValueError("split.eval + split.test must be below 1.0 so train keeps rows")
        return self


class LeakageConfig(Strict):
    check: bool = Field(
        True, description="Report exact and near-duplicate overlap between train and eval/test."
    )
    remove_from_train: bool = Field(False, description="Drop train rows that leak into eval/test.")
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Near-duplicate similarity threshold for leakage."
    )
    near: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Near-duplicate (MinHash) leakage: on, off (exact hashing only), or auto: on when clean.near_dedupe is on or train has at most 20,000 rows.",
    )


class BalanceConfig(Strict):
    column: str | None = Field(
        None,
        description="Column to balance (label or a group column such as a demographic attribute).",
    )
    strategy: Literal["none", "undersample", "oversample", "loss_weights"] = Field(
        "none", description="How to balance the train split."
    )


class DataConfig(Strict):
    train: str | list[str] | None = Field(
        None, description="Training file(s) or a datasets save_to_disk folder."
    )
    eval: str | list[str] | None = Field(
        None, description="Eval file(s); if absent, split from train."
    )
    test: str | list[str] | None = Field(
        None, description="Test file(s); if absent, split from train when split.test > 0."
    )
    format: str = Field("auto", description="Row format; auto detects from the columns.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in format_names():
            raise ValueError(f"unknown format {v!r} (known: {', '.join(format_names())})")
        return v

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map lmtune field -> your column, e.g. {text: review, label: stars}.",
    )
    labels: list[str] | None = Field(
        None,
        description="Allowed labels in order; rows with other labels are rejected. None: collected from train.",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, v: Any) -> Any:
        # YAML reads `labels: [0, 1]` as ints; labels are compared as strings everywhere.
        return [str(x) for x in v] if isinstance(v, list) else v

    max_bad_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this fraction of rows is rejected.",
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning steps.")
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Splitting when eval/test files are absent."
    )
    leakage: LeakageConfig = Field(
        default_factory=LeakageConfig, description="Train/eval/test overlap check."
    )
    balance: BalanceConfig = Field(
        default_factory=BalanceConfig, description="Balancing by a label or group column."
    )
    template: Literal["auto", "alpaca", "chatml"] = Field(
        "auto",
        description="Prompt template for instruction/chat rows; auto uses the tokenizer's chat template when present.",
    )
    packing: bool = Field(
        False,
        description="Pack several SFT examples per sequence (block-diagonal attention, no cross-talk).",
    )
    bucketing: bool = Field(
        True, description="Group examples of similar length into batches to cut padding."
    )
    limit: int | None = Field(
        None, gt=0, description="Use at most this many rows per input file (quick experiments)."
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of csv/tsv/jsonl/json/txt inputs (e.g. latin-1, cp1252); a byte-order mark is skipped.",
    )
    # Out-of-core data: encoding in worker processes, the on-disk cache, hub/streaming inputs.
    num_proc: int = Field(
        1,
        ge=1,
        description="Processes that clean rows in prepare and tokenize them (datasets.map num_proc) on a cache miss.",
    )
    cache: bool = Field(
        True,
        description="Reuse prepared and tokenized data across runs (an Arrow cache keyed by the data files, tokenizer, template and every data/encoding setting).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where the data cache lives; None: $LMTUNE_CACHE_DIR, else $XDG_CACHE_HOME/lmtune/data, else ~/.cache/lmtune/data.",
    )
    streaming: bool = Field(
        False,
        description="Read hf:// and datasets inputs as a stream, taking only the rows train.max_steps needs (eval/test by a hash of each row); needs train.max_steps.",
    )
