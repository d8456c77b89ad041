"""MODEL_CARD.md: what the model is, what it learnt from, how well it does, what it is for.

Every figure is copied from the run's files (config.yaml, summary.json, eval.json,
data_report.json, baselines/forgetting/audit.json, lmtune_model.json). What the files cannot
know (intended users, language, licence) is a clearly marked paragraph for the owner to
complete; nothing is filled in by guessing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmtune.models.readme import write_readme
from lmtune.report import MODEL_CARD_FILE
from lmtune.report.card_data import data_section, md_table
from lmtune.report.collect import Folder, headline, load_folder, read_json, weight_average_text
from lmtune.report.htmlkit import fmt
from lmtune.report.sections import overfitting_messages
from lmtune.tasks import TASKS, section_models
from lmtune.tasks.spec import TaskSpec

TODO = "> **TO COMPLETE (model owner):**"


def _spec(task: str | None) -> TaskSpec | None:
    return TASKS.get(task or "")


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n examples."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _method(f: Folder) -> str:
    a = f.config.get("adapter") or {}
    kind = f.meta.get("adapter") or a.get("type") or "unknown"
    if kind in ("lora", "dora"):
        text = (
            f"{'LoRA' if kind == 'lora' else 'DoRA'} adapter (r {a.get('r')}, alpha {a.get('alpha')}, dropout {a.get('dropout')}, "
            f"target modules {a.get('target_modules')})"
        )
    else:
        text = {
            "full": "full fine-tuning (every weight trained)",
            "head": "head-only training (the pre-trained body frozen)",
        }.get(kind, str(kind))
    ts = _spec(f.task)
    if ts and ts.section == "preference" and not ts.own_loss:
        p = f.config.get("preference") or {}
        text += f"; preference loss {p.get('loss')}, beta {p.get('beta')}"
    s = f.summary
    if s.get("trainable_params") and s.get("total_params"):
        text += (
            f"; {fmt(s['trainable_params'])} of {fmt(s['total_params'])} parameters trained "
            f"({100 * s['trainable_params'] / s['total_params']:.2f}%)"
        )
    return text


def _base_text(m: dict[str, Any], cfg_model: dict[str, Any]) -> str:
    base = str(m.get("base_model") or cfg_model.get("name_or_path"))
    if not m.get("base_model_local"):
        return base
    given = cfg_model.get("name_or_path") or base
    return (
        f"{given} (a local folder, not a Hugging Face Hub id: loading this adapter needs "
        "that folder, or point adapter_config.json's base_model_name_or_path at a copy)"
    )


def details_section(f: Folder) -> list[str]:
    """Model details: task, base model, method, inputs."""
    m, cfg_model = f.meta, f.config.get("model") or {}
    rows = [
        ["task", f.task or "unknown"],
        ["base model", _base_text(m, cfg_model)],
        [
            "base model revision",
            m.get("base_revision") or cfg_model.get("revision") or "not recorded",
        ],
        ["method", _method(f)],
    ]
    if m.get("labels"):
        rows.append(["labels", ", ".join(map(str, m["labels"]))])
    rows += [
        ["input format", m.get("format")],
        ["prompt template", m.get("template")],
        ["max length (tokens)", m.get("max_length") or cfg_model.get("max_length")],
        ["merged into base weights", m.get("merged")],
    ]
    return ["## Model details", "", md_table(["", ""], [r for r in rows if r[1] is not None])]


HYPER_KEYS = (
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "lr",
    "head_lr",
    "scheduler",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "class_weights",
)


def training_section(f: Folder) -> list[str]:
    """Hyperparameters from config.yaml and what the run did (steps, runtime, best step)."""
    t, s = f.config.get("train") or {}, f.summary
    # Config values as written (1e-3 stays 0.001, not a rounded 0.0010).
    rows = [
        [k, str(t[k])]
        for k in HYPER_KEYS
        if k in ("epochs", "lr") or (t.get(k) is not None and t.get(k) != 0 and t.get(k) != -1)
    ]
    if (f.config.get("run") or {}).get("seed") is not None:
        rows.append(["seed", f.config["run"]["seed"]])
    es = t.get("early_stopping") or {}
    if es:
        rows.append(["best checkpoint by", f"{es.get('metric')} ({es.get('mode')})"])
    section = (_spec(f.task) or TaskSpec("", "", "causal", (), ("", ""), "")).section
    if section in ("preference", "rlhf") or section in section_models():  # the task's settings
        rows += [
            [f"{section}.{k}", str(v)]
            for k, v in (f.config.get(section) or {}).items()
            if v is not None
        ]
    done = [
        ["steps trained", s.get("train_steps")],
        ["examples seen", s.get("train_samples")],
        ["runtime (s)", s.get("train_runtime_s")],
        ["precision used", s.get("precision")],
        ["evaluated in", s.get("eval_precision")],
        ["processes", s.get("world_size")],
        ["best step", s.get("best_step")],
        ["stopped early", s.get("stopped_early")],
        ["weight average", weight_average_text(s)],
    ]
    rows += [r for r in done if r[1] is not None]
    return [
        "## Training procedure",
        "",
        md_table(["hyperparameter", "value"], rows) if rows else "Not recorded.",
    ]


def eval_section(f: Folder) -> list[str]:
    """Metrics with the data they were measured on (and the untrained model's, when known)."""
    where, metrics = headline(f)
    out = ["## Evaluation", ""]
    if not metrics:
        return out + ["No held-out evaluation was recorded for this run."]
    n = int(metrics.get("eval_examples") or 0)
    out.append(
        f"Measured on the {where}"
        + (f" ({fmt(n)} examples)" if n else "")
        + ", never used for training"
        + (
            "."
            if f.eval
            else "; the same split picked the best checkpoint, so the figures lean optimistic."
        )
    )
    split = str(f.eval.get("split") or "eval") if f.eval else "eval"
    before = (f.summary.get("eval_before") or {}).get(split) or {}
    rows = [[k, v, before.get(k)] if before else [k, v] for k, v in metrics.items()]
    out += [
        "",
        md_table(["metric", "value", "before training"] if before else ["metric", "value"], rows),
    ]
    if "accuracy" in metrics and n:
        lo, hi = wilson_interval(metrics["accuracy"], n)
        out += [
            "",
            f"95% confidence interval of the accuracy (Wilson, n={n}): {lo:.3f} to {hi:.3f}.",
        ]
    pc = (
        (f.eval.get("details") or {}).get("per_class")
        if isinstance(f.eval.get("details"), dict)
        else None
    )
    if isinstance(pc, dict) and pc:
        out += [
            "",
            md_table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [c, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                    for c, m in pc.items()
                ],
            ),
        ]
    flags = f.summary.get("overfitting")
    if isinstance(flags, dict) and flags:
        msgs = overfitting_messages(flags)
        out += ["", "Overfitting checks: " + ("; ".join(msgs) if msgs else "nothing flagged") + "."]
    return out


def baselines_section(f: Folder) -> list[str]:
    """Zero-/few-shot baselines beside the fine-tuned model."""
    b = f.extras.get("baselines")
    if not b:
        return []
    metric = str(b.get("metric") or "accuracy")
    rows = [
        [
            r.get("method"),
            r.get("k"),
            r.get(metric),
            r.get(f"{metric}_std"),
            r.get("macro_f1"),
            r.get("seeds"),
        ]
        for r in b.get("rows") or []
        if isinstance(r, dict)
    ]
    head = f"Base model {b.get('base_model', '')} without fine-tuning, on the same rows".strip()
    return [
        "## Baselines",
        "",
        head + ".",
        "",
        md_table(["method", "k", metric, f"{metric} std", "macro F1", "seeds"], rows),
    ]


def forgetting_section(f: Folder) -> list[str]:
    """General ability before and after fine-tuning."""
    d = f.extras.get("forgetting")
    if not d:
        return []
    rows = [
        [k, f"{v:+.1%}" if k == "rel_change" and isinstance(v, (int, float)) else v]
        for k, v in d.items()
        if k not in ("mitigation", "details") and not isinstance(v, (dict, list))
    ]
    rows += [
        [f"mitigation.{k}", v]
        for k, v in (d.get("mitigation") or {}).items()
        if not isinstance(v, (dict, list))
    ]
    return ["## Forgetting", "", md_table(["", ""], rows)]


def bias_section(f: Folder) -> list[str]:
    """Bias audit results, or a plain statement that none was run."""
    a = f.extras.get("audit")
    out = ["## Bias evaluation", ""]
    if not a:
        return out + ["No bias audit was run for this model; its biases are unmeasured."]
    for name, key in (
        ("CrowS-Pairs stereotype score (0.5 = no preference)", "crows_pairs"),
        (
            "Counterfactual swaps (prediction change when a demographic term is swapped)",
            "counterfactual",
        ),
    ):
        part = a.get(key)
        if not isinstance(part, dict) or not isinstance(part.get("overall"), dict):
            continue
        overall = part["overall"]
        prev = (
            ((a.get("before") or {}).get(key) or {}).get("overall")
            if isinstance(a.get("before"), dict)
            else None
        )
        rows = [["after fine-tuning", *overall.values()]]
        if isinstance(prev, dict):
            rows.append(["before fine-tuning", *[prev.get(k) for k in overall]])
        out += [f"{name}:", "", md_table(["", *overall], rows), ""]
    skipped = a.get("skipped") if isinstance(a.get("skipped"), dict) else {}
    out += [f"- {k} not measured: {v}" for k, v in skipped.items() if v]
    return out[:-1] if out[-1] == "" else out


def use_section(f: Folder) -> list[str]:
    """Intended use and limitations: what the files tell, then the owner's paragraph."""
    labels = ", ".join(map(str, f.meta.get("labels") or [])) or "?"
    ts = _spec(f.task)  # one line per task (its spec): what the model does
    purpose = ts.description if ts else f"performs the task {f.task or 'unknown'}"
    purpose = purpose.format(labels=labels, fmt=f.meta.get("format") or "text")
    files = ", ".join(
        sorted({Path(str(i.get("file"))).name for i in f.data_report.get("inputs") or []})
    )
    out = [
        "## Intended use",
        "",
        f"This model {purpose}. It learnt from {files or 'the training data of this run'}"
        " and is meant for inputs like those.",
        "",
        f"{TODO} who should use this model and for what; uses it must not be put to; the language(s) "
        "of the data; the licence (at least as restrictive as the base model's and the data's); a contact.",
        "",
        "## Limitations",
        "",
    ]
    bullets = ["Inherits the limitations and biases of its base model and of the training data."]
    where, metrics = headline(f)
    n = int(metrics.get("eval_examples") or 0)
    if n:
        bullets.append(
            f"Measured on {n} held-out examples ({where}); figures carry sampling error at that size."
        )
    if f.data_report.get("splits_from"):
        bullets.append(
            "The evaluation data was split from the training files: it measures in-distribution "
            "performance only; other sources and domains are untested."
        )
    max_len = f.meta.get("max_length")
    longest = max(
        (
            int((m.get("tokens") or {}).get("max") or 0)
            for m in (f.data_report.get("lengths") or {}).values()
        ),
        default=0,
    )
    if max_len and longest > int(max_len):
        bullets.append(
            f"Inputs are cut to {max_len} tokens; the longest training row had {longest}."
        )
    if isinstance(metrics.get("ece"), float) and metrics["ece"] > 0.05:
        bullets.append(
            f"Confidences are not well calibrated (ECE {metrics['ece']:.3f}); do not read them as probabilities."
        )
    if "audit" not in f.extras:
        bullets.append("No bias audit was run.")
    if "forgetting" not in f.extras and not (_spec(f.task) and _spec(f.task).labelled):
        bullets.append("Loss of general ability (forgetting) was not measured.")
    bullets += [f"Data warning: {w}" for w in f.data_report.get("warnings") or []]
    out += [f"- {b}" for b in bullets]
    out += [
        "",
        f"{TODO} known failure modes seen in use, and inputs the model should not be given.",
    ]
    return out


def usage_section(f: Folder) -> list[str]:
    """How to load the model again."""
    ts = _spec(f.task)
    if ts and ts.labelled:
        cmd = "lmtune predict MODEL_DIR --input texts.txt"
    elif ts and ts.model == "reward":
        cmd = "lmtune score MODEL_DIR --input rows.jsonl"
    elif ts and ts.generates:
        cmd = 'lmtune generate MODEL_DIR --prompt "..."'
    else:
        cmd = "lmtune eval MODEL_DIR --data labelled.jsonl"
    adapter = (
        "a peft adapter (load with PeftModel.from_pretrained on the base model)"
        if f.meta.get("adapter") in ("lora", "dora") and not f.meta.get("merged")
        else "a transformers model folder"
    )
    lines = [
        "## How to use",
        "",
        f"The folder holds {adapter}, its tokenizer and lmtune_model.json. "
        "`lmtune export MODEL_DIR OUT` writes a standalone merged copy.",
        "",
        "```",
        cmd,
        "```",
    ]
    if f.meta.get("pooling") == "mean":
        lines += [
            "",
            "The classifier reads the mean of the encoder's token vectors (model.pooling: mean), a "
            "model type transformers does not know by itself: load the folder with lmtune, or run "
            "`import lmtune.models.load` before `AutoModelForSequenceClassification.from_pretrained`.",
        ]
    return lines


def render_model_card(f: Folder) -> str:
    """The whole card as Markdown."""
    from lmtune import __version__

    parts = [
        f"# Model card: {f.name}",
        "",
        f"Written by lmtune {__version__} from the run's files (config.yaml, summary.json, eval.json, "
        "data_report.json and, when present, baselines.json, forgetting.json, audit.json). Paragraphs "
        "marked TO COMPLETE need the model owner.",
        "",
    ]
    for fn in (
        details_section,
        data_section,
        training_section,
        eval_section,
        baselines_section,
        forgetting_section,
        bias_section,
        use_section,
        usage_section,
    ):
        lines = fn(f)
        if lines:
            parts += [*lines, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_model_card(run_dir: str | Path, model_dir: str | Path) -> Path:
    """Write model_dir/MODEL_CARD.md from run_dir's files and model_dir's lmtune_model.json."""
    folder = load_folder(run_dir)
    meta = read_json(Path(model_dir) / "lmtune_model.json")
    if isinstance(meta, dict):
        folder.meta = meta
    out = Path(model_dir) / MODEL_CARD_FILE
    out.write_text(render_model_card(folder), encoding="utf-8")
    write_readme(model_dir)
    return out
