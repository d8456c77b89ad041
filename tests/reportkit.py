"""Hand-made run and eval folders for the report and model card tests: the files a training
run writes (metrics, eval, baselines, forgetting, audit, data report, predictions)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('x')</script> & the movie"


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) of a PNG, decoded for real (a broken file raises)."""
    assert png[:8] == PNG_MAGIC
    img = mpimg.imread(io.BytesIO(png), format="png")
    return img.shape[0], img.shape[1]


def dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def dump_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


TRAIN = [
    {
        "event": "train",
        "step": s,
        "epoch": 0,
        "loss": 1.2 - 0.1 * i,
        "lr": 1e-3 * (1 - s / 40),
        "tokens": 100 * s,
        "elapsed_s": 0.1 * s,
    }
    for i, s in enumerate((5, 10, 15, 20, 25, 30, 35, 40))
]
EVALS = [
    {
        "event": "eval",
        "step": s,
        "epoch": s // 20,
        "eval_loss": el,
        "accuracy": acc,
        "macro_f1": acc - 0.02,
    }
    for s, el, acc in ((10, 0.9, 0.6), (20, 0.7, 0.7), (30, 0.75, 0.78), (40, 0.8, 0.8125))
]
PER_CLASS = {
    "neg": {"precision": 0.875, "recall": 0.7, "f1": 0.7778, "support": 10},
    "pos": {"precision": 0.6667, "recall": 0.8571, "f1": 0.75, "support": 7},
}
EVAL = {
    "split": "test",
    "eval_loss": 0.61,
    "accuracy": 0.8125,
    "macro_f1": 0.7639,
    "ece": 0.0912,
    "eval_examples": 17.0,
    "notes_from_a_new_stage": {"custom_key": "custom value"},
    "details": {
        "per_class": PER_CLASS,
        "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[7, 3], [1, 6]]},
    },
}
BASELINES = {
    "metric": "accuracy",
    "base_model": "builtin:minilm",
    "label_descriptions": {"pos": "a happy text"},
    "rows": [
        {"method": "zero-shot", "k": 0, "accuracy": 0.5312, "macro_f1": 0.41, "seeds": 1},
        {
            "method": "few-shot",
            "k": 16,
            "accuracy": 0.6471,
            "accuracy_std": 0.0433,
            "macro_f1": 0.6,
            "seeds": 3,
        },
        {"method": "fine-tuned", "k": None, "accuracy": 0.8125, "macro_f1": 0.7639},
    ],
}
FORGETTING = {
    "reference": "wikitext-2 sample",
    "measure": "pseudo_perplexity",
    "before": 12.5,
    "after": 14.25,
    "abs_change": 1.75,
    "rel_change": 0.14,
    "higher_is_better": False,
    "mitigation": {"l2sp": 0.01, "replay": None},
    "an_extra_key": "shown generically",
}
AUDIT = {
    "model": "run/model",
    "crows_pairs": {
        "overall": {"score": 0.5821, "ci_low": 0.55, "ci_high": 0.61, "n": 200},
        "by_type": {"gender": {"score": 0.6104, "ci_low": 0.5, "ci_high": 0.7, "n": 60}},
    },
    "counterfactual": {
        "overall": {"flip_rate": 0.0417, "mean_abs_change": 0.031, "n": 48},
        "by_category": {"gender": {"flip_rate": 0.0625, "mean_abs_change": 0.04, "n": 16}},
        "worst": [
            {
                "text": "he was great",
                "swapped": "she was great",
                "category": "gender",
                "pred": "pos",
                "pred_swapped": "neg",
                "change": 0.52,
            }
        ],
    },
    "before": {
        "crows_pairs": {"overall": {"score": 0.5633, "ci_low": 0.53, "ci_high": 0.6, "n": 200}},
        "counterfactual": None,
    },
}
DATA_REPORT = {
    "format": "classification",
    "task": "classification",
    "seed": 1,
    "splits_from": {"test": "train"},
    "inputs": [
        {"split": "train", "file": "data/reviews.jsonl", "rows_read": 120, "rows_rejected": 2}
    ],
    "rows_in": 120,
    "rows_added": 0,
    "rows_out": {"train": 80, "eval": 21, "test": 17},
    "drops": {
        "total": 2,
        "by_stage": {"validate": 2},
        "by_reason": {"validate": {"empty text": 2}},
    },
    "redactions": {"email": 3, "phone": 0},
    "labels": ["neg", "pos"],
    "label_weights": None,
    "label_distribution": {"train": {"neg": 40, "pos": 40}, "test": {"neg": 10, "pos": 7}},
    "lengths": {
        "train": {
            "tokens": {"count": 80, "min": 3, "mean": 9.5, "p50": 9.0, "p95": 14.0, "max": 300}
        }
    },
    "leakage": {
        "checked": True,
        "train_rows_leaking": 0,
        "by_split": {},
        "removed_from_train": 0,
        "examples": [],
    },
    "warnings": [],
}


def predictions() -> list[dict[str, Any]]:
    rows = []
    for i, (label, pred, prob) in enumerate(
        [
            ("neg", "neg", 0.91),
            ("neg", "pos", 0.83),
            ("pos", "pos", 0.77),
            ("pos", "pos", 0.64),
            ("neg", "neg", 0.58),
            ("pos", "neg", 0.55),
        ]
    ):
        other = "pos" if pred == "neg" else "neg"
        rows.append(
            {
                "text": f"row {i}",
                "label": label,
                "pred": pred,
                "prob": prob,
                "probs": {pred: prob, other: round(1 - prob, 6)},
            }
        )
    return rows


def make_run(root: Path, full: bool = True) -> Path:
    """A run folder as `lmtune train` leaves it; full=False keeps only the always-present files."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "run: {name: tiny-sentiment, seed: 1}\ntask: classification\nmodel: {name_or_path: builtin:minilm, "
        "max_length: 64}\nadapter: {type: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: auto}\n"
        "data: {clean: {normalize: true, dedupe: true, pii: true}, split: {stratify: true}}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.001, scheduler: linear, early_stopping: {metric: accuracy, "
        "mode: max}}\n"
    )
    dump_lines(run / "metrics.jsonl", TRAIN + EVALS)
    summary = {
        "train_steps": 40,
        "train_runtime_s": 12.5,
        "final_train_loss": 0.5,
        "best_metric": "accuracy",
        "best_step": 40,
        "best_eval": EVALS[-1],
        "trainable_params": 1000,
        "total_params": 50000,
        "data": {"train": 80, "eval": 21, "test": 17},
    }
    if full:
        summary["eval_before"] = {"test": {"eval_loss": 0.69, "accuracy": 0.4375, "macro_f1": 0.3}}
        summary["overfitting"] = {
            "flags": [
                "eval_loss_rising: eval loss rose over 3 evaluations while train "
                "loss fell (steps 20-40)"
            ],
            "evaluations": 4,
            "gap_at_end": 0.4,
        }
        dump(run / "eval.json", EVAL)
        dump_lines(
            run / "errors.jsonl",
            [
                {
                    "source": "d.jsonl:3",
                    "text": XSS,
                    "gold": "neg",
                    "predicted": "pos",
                    "confidence": 0.83,
                }
            ],
        )
        dump_lines(run / "predictions.jsonl", predictions())
        dump(run / "data_report.json", DATA_REPORT)
        dump(run / "baselines.json", BASELINES)
        dump(run / "forgetting.json", FORGETTING)
        dump(run / "audit.json", AUDIT)
    dump(run / "summary.json", summary)
    dump(
        run / "model" / "lmtune_model.json",
        {
            "task": "classification",
            "labels": ["neg", "pos"],
            "format": "classification",
            "template": "auto",
            "max_length": 64,
            "base_model": "builtin:minilm",
            "adapter": "lora",
            "run_name": "tiny-sentiment",
            "merged": False,
        },
    )
    return run


# ------------------------------------------------------------------ calibration
