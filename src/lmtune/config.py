"""Typed run configuration: one YAML file plus `key.sub=value` overrides.

Every field carries a one-line description (shown by `lmtune config show --fields`).
Validation reports every problem at once, each with its dotted key path and the file name,
so a user fixes a config in one pass instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from lmtune.config_align import PreferenceConfig, RLHFConfig
from lmtune.config_base import Strict
from lmtune.config_data import (  # noqa: F401 - sections are importable from lmtune.config too
    BUILTIN_FORMATS,
    PREFERENCE_FORMATS,
    BalanceConfig,
    CleanConfig,
    DataConfig,
    LeakageConfig,
    NearDedupeConfig,
    PiiMode,
    SplitConfig,
    format_names,
)
from lmtune.config_eval import (  # noqa: F401
    AuditConfig,
    BaselinesConfig,
    EWCConfig,
    ForgettingConfig,
    MitigationConfig,
    QAConfig,
    ReplayConfig,
)
from lmtune.config_model import AdapterConfig, ModelConfig, QuantizationConfig  # noqa: F401
from lmtune.config_ops import GateConfig, MonitorConfig, PrunerConfig, SearchConfig, SearchParam  # noqa: F401
from lmtune.config_train import (  # noqa: F401
    DEFAULT_LR,
    AverageConfig,
    EarlyStopConfig,
    TrackingConfig,
    TrainConfig,
)
from lmtune.errors import UserError
from lmtune.tasks import TASKS, section_models, section_owners, spec
from lmtune.tasks.spec import load_object

# What a task whose first format is the key reads, for "task X <needs>, not data.format Y".
_NEEDS = {
    "preference": "needs preference pairs (data.format preference, pairwise, dialogue_pair or auto)",
    "prompt": "reads prompts (data.format prompt or auto)",
    "qa": "reads SQuAD JSON or context/question/answers rows (data.format qa or auto)",
    "classification": "needs labelled rows (data.format classification, pair_classification "
    "or auto)",
}


def _tasks_where(flag: str) -> str:
    return ", ".join(n for n, s in TASKS.items() if getattr(s, flag))


class RunConfig(Strict):
    name: str = Field("run", description="Run name; used in logs and the model card.")
    output_dir: str = Field(
        "runs/run", description="Folder that receives everything this run writes."
    )
    seed: int = Field(42, description="Seed for data splits, shuffling, init and dropout.")


class Config(Strict):
    """A whole run. Every section has defaults, so a config only states what differs."""

    # What loading did on the user's behalf (aliases read, task inferred, lr picked): the CLI
    # prints these, `config show` as comments.
    _notes: list[str] = PrivateAttr(default_factory=list)

    run: RunConfig = Field(default_factory=RunConfig, description="Run identity and output folder.")
    task: str = Field(
        "classification",
        description="What to train (tasks/__init__.py registers them): sft (causal LM), classification, reward (Bradley-Terry reward model), dpo or orpo (preference tuning of a causal LM), rlhf (online RL of a causal LM from a reward), qa (extractive QA).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig, description="Which weights train."
    )
    data: DataConfig = Field(
        default_factory=DataConfig, description="Data loading, cleaning and splitting."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Optimisation and the training loop."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment tracking: TensorBoard and MLflow (both off by default).",
    )
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="Preference learning (tasks reward, dpo, orpo).",
    )
    rlhf: RLHFConfig = Field(
        default_factory=RLHFConfig,
        description="Online RL from a reward model or reward function (task rlhf).",
    )
    forgetting: ForgettingConfig = Field(
        default_factory=ForgettingConfig,
        description="Forgetting: a reference set measured before and after training (forgetting.json), and mitigation (L2-SP, EWC, replay).",
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Post-release monitoring thresholds (`lmtune monitor`).",
    )
    qa: QAConfig = Field(
        default_factory=QAConfig, description="Extractive question answering (task qa)."
    )
    baselines: BaselinesConfig = Field(
        default_factory=BaselinesConfig,
        description="Zero-/few-shot baselines of the base model beside the fine-tuned one (task classification).",
    )
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="Hyperparameter search run by `lmtune tune` (ignored by `lmtune train`).",
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig,
        description="Bias audit before and after training (CrowS-Pairs, counterfactual term swaps); also `lmtune audit`.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Release gate and model registry for `lmtune pipeline` (ignored by `lmtune train`).",
    )

    @property
    def notes(self) -> list[str]:
        """What loading decided for the user (aliases, inferred task, lr per adapter)."""
        return self._notes

    @model_validator(mode="after")
    def _lr_per_adapter(self) -> Config:
        if "lr" not in self.train.model_fields_set:
            lr = DEFAULT_LR[self.adapter.type]
            # Not through validate_assignment: the dumped config must still say it was chosen
            # here (a dump sets lr explicitly, so a reload keeps this value).
            self.train.__dict__["lr"] = lr
        return self

    sections: dict[str, Any] = Field(
        default_factory=dict,
        description="Config sections that task modules declare (e.g. kto:); written at the top level.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        spec(v)  # ValueError naming the known tasks
        return v

    @model_validator(mode="before")
    @classmethod
    def _collect_sections(cls, data: Any) -> Any:
        # A section a task module declares (its spec's section_model) is written at the top
        # level like the built-in ones; it is kept in `sections` and validated by its model.
        if isinstance(data, dict) and any(k in data for k in section_models()):
            data = dict(data)
            data["sections"] = {
                **(data.get("sections") or {}),
                **{k: data.pop(k) for k in section_models() if k in data},
            }
        return data

    @field_validator("sections")
    @classmethod
    def _validate_sections(cls, v: dict[str, Any]) -> dict[str, Any]:
        models = section_models()
        unknown = [k for k in v if k not in models]
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(unknown)}")
        return {k: load_object(models[k]).model_validate(value) for k, value in v.items()}

    @model_serializer(mode="wrap")
    def _flat_sections(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        out.update(out.pop("sections", None) or {})
        return out

    def section(self, name: str) -> Any:
        """A task-declared config section (its defaults when the config leaves it out)."""
        if name in self.sections:
            return self.sections[name]
        return load_object(section_models()[name])()

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        problems = self._format_problems() + self._section_problems()
        problems += self._preference_problems()
        problems += self._rlhf_problems()
        problems += self.forgetting.problems(self.task, self.adapter.type)
        problems += self._qa_problems()
        task = spec(self.task)
        problems += self._quantization_problems()
        if self.baselines.enabled and not task.labelled:
            problems.append(f"baselines.enabled only applies to task {_tasks_where('labelled')}")
        if self.data.packing and not task.packs:
            problems.append(f"data.packing only applies to task {_tasks_where('packs')}")
        if self.train.class_weights != "none" and not task.labelled:
            problems.append(f"train.class_weights only applies to task {_tasks_where('labelled')}")
        if self.data.balance.strategy == "loss_weights" and not task.labelled:
            problems.append(
                "data.balance.strategy loss_weights only applies to task "
                + _tasks_where("labelled")
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _quantization_problems(self) -> list[str]:
        if self.model.quantization is None:
            return []
        problems = []
        if self.adapter.type in ("full", "head"):
            problems.append(
                f"model.quantization: a {self.model.quantization.bits}-bit base cannot train "
                f"(adapter.type {self.adapter.type}): set adapter.type lora or dora (QLoRA), or "
                "remove model.quantization"
            )
        if spec(self.task).model != "causal":
            problems.append(
                f"model.quantization applies to causal-LM tasks ({', '.join(n for n, t in TASKS.items() if t.model == 'causal')}), not "
                f"task {self.task}: remove model.quantization"
            )
        return problems

    def _format_problems(self) -> list[str]:
        task, fmt = spec(self.task), self.data.format
        if fmt == "auto" or fmt in task.formats:
            return []
        needs = _NEEDS.get(task.formats[0], f"reads data.format {', '.join(task.formats)} or auto")
        users = [n for n, s in TASKS.items() if fmt in s.formats]
        return [
            f"task {self.task} {needs}, not data.format {fmt}"
            + (f" (data.format {fmt}: use task {', '.join(users)})" if users else "")
        ]

    def _section_problems(self) -> list[str]:
        # Compare with the defaults (not fields_set) so a dumped config still loads.
        problems = []
        for section, owners in section_owners().items():
            if self.task in owners:
                continue
            if section in section_models():
                default = load_object(section_models()[section])()
                given = section in self.sections and self.sections[section] != default
            else:
                value = getattr(self, section)
                given = value != type(value)()
            if given:
                which = "task" if len(owners) == 1 else "tasks"
                problems.append(
                    f"the {section} section only applies to {which} {', '.join(owners)}"
                )
        return problems

    def _preference_problems(self) -> list[str]:
        pref, task = self.preference, spec(self.task)
        problems = []
        if pref.ties == "keep" and not task.ties:
            problems.append(
                f"preference.ties: keep is for task {_tasks_where('ties')} (a tie is a target "
                f"of 0.5 there); task {self.task} has no use for ties: use preference.ties: drop"
            )
        if task.own_loss and pref.loss != "sigmoid":
            problems.append(
                f"preference.loss picks a DPO-family loss; task {self.task} has its own"
            )
        if pref.label_smoothing > 0 and pref.loss in ("ipo", "hinge"):
            problems.append(
                f"preference.label_smoothing does not apply to preference.loss {pref.loss} "
                "(use sigmoid, robust or simpo)"
            )
        return problems

    def _rlhf_problems(self) -> list[str]:
        rl = self.rlhf
        if spec(self.task).section != "rlhf":
            return []
        problems = []
        if not rl.reward:
            problems.append(
                "task rlhf needs rlhf.reward: a reward-model run folder or a Python "
                "function as module:function (e.g. examples.rewards:vowel_share)"
            )
        if rl.max_new_tokens >= self.model.max_length:
            problems.append(
                f"rlhf.max_new_tokens ({rl.max_new_tokens}) must be below "
                f"model.max_length ({self.model.max_length}) to leave room for the prompt"
            )
        return problems

    def _qa_problems(self) -> list[str]:
        problems: list[str] = []
        if spec(self.task).section != "qa":
            return problems
        if self.qa.doc_stride + 32 > self.model.max_length:
            # Each window holds the question, 3 special tokens, doc_stride old and some new context.
            problems.append(
                f"qa.doc_stride ({self.qa.doc_stride}) must be at least 32 below "
                f"model.max_length ({self.model.max_length}) to leave room for the "
                "question and new context in each window"
            )
        return problems


def _parse_value(raw: str) -> Any:
    """Parse an override value with YAML rules so `lr=1e-4`, `x=true`, `l=[a,b]` get real types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(
    data: dict[str, Any], overrides: list[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order onto a nested dict (returns the same dict).

    Aliases (`learning_rate=1e-4`, config_aliases.py) set their canonical key, so an override
    replaces the file's value however either spells it; each is noted in `notes`.
    """
    from lmtune.config_aliases import canonical_override_key, resolve, set_path

    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (example: train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        alias = canonical_override_key(key)
        if alias is None:
            set_path(data, key, _parse_value(raw))
            continue
        for canonical, value in resolve(alias, _parse_value(raw)).items():
            set_path(data, canonical, value)
            if notes is not None:
                notes.append(f"{canonical} (given as {key})")
    return data


def _known_keys() -> list[str]:
    """Every dotted key and section name (for "did you mean" suggestions)."""
    keys = [k for k, _, _ in describe_fields()]
    return list(dict.fromkeys([*keys, *(k.rsplit(".", 1)[0] for k in keys if "." in k)]))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {len(err.errors())} problem(s) in the config:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            from lmtune.config_aliases import suggest

            close = suggest(path, _known_keys())
            hint = f"did you mean {' or '.join(close)}? " if close else "check the spelling; "
            msg = f"unknown key ({hint}`lmtune config show --fields` lists the keys)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        lines.append(f"  - {path}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides, validate; raise UserError listing every problem."""
    data: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise UserError(
                f"config file {p} does not exist (check the path; shipped examples are in configs/)"
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(
                f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(
                f"{p}: the top level must be a mapping of sections (run, model, data, train, ...)"
            )
        data = loaded
    from lmtune.config_aliases import normalize, normalize_values

    notes = normalize(data, source)
    if path is not None and isinstance(data.get("run", {}), dict):
        # A run named after its config file: report titles and logs say which run it is.
        data.setdefault("run", {}).setdefault("name", Path(path).stem)
    apply_overrides(data, list(overrides or []), notes)
    notes += normalize_values(data)
    if "task" not in data:
        from lmtune.data.infer import infer_task

        task, why = infer_task(data)
        if task is not None:
            data["task"] = task
            notes.append(f"task {task} ({why}; set task: to choose another)")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(err, source)) from None
    if "lr" not in cfg.train.model_fields_set:
        notes.append(f"train.lr {cfg.train.lr:g} (the default for adapter {cfg.adapter.type})")
    cfg._notes = notes
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `config show` prints and the run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(
    model: type[BaseModel] = Config, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(key path, default, description) for every field, for `config show --fields`."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            rows.append((key, repr(default), field.description or ""))
    return rows
