"""Baselines end to end: `lmtune train` with baselines enabled and `lmtune eval --baselines`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmtune.errors import UserError
from lmtune.evaluate.run import run_eval
from lmtune.train.run import run_training
from runkit import config, sentiment_rows, tiny_causal_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["zero-shot", "few-shot", "fine-tuned"]


def lmtune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lmtune", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def test_encoder_baselines_train_and_eval_cli(tmp_path: Path) -> None:
    # builtin:minilm with a trained head only: quick, and its embeddings are real, so the
    # baselines have something to show (a random tiny encoder's would be noise).
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(96))
    held_out = write_jsonl(tmp_path / "held.jsonl", sentiment_rows(40, seed=5))
    descriptions = {"pos": ["a positive review"], "neg": "a negative review"}
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": "builtin:minilm", "max_length": 24},
        adapter={"type": "head"},
        data={"train": str(data), "split": {"eval": 0.2, "test": 0.25}},
        train={"epochs": 3, "lr": 1e-2, "eval_before": False},
        baselines={"enabled": True, "shots": 3, "seeds": 2, "label_descriptions": descriptions},
    )
    summary = run_training(cfg, quiet=True)
    run = Path(cfg.run.output_dir)
    report = json.loads((run / "baselines.json").read_text())
    assert summary["baselines"] == report
    assert [r["method"] for r in report["rows"]] == METHODS
    zero, few, tuned = report["rows"]
    assert report["base_model"] == "builtin:minilm" and report["base_kind"] == "encoder"
    assert report["data"] == "test split" and report["eval_rows"] == summary["data"]["test"]
    assert tuned["accuracy"] == summary["test"]["accuracy"] and tuned["k"] is None
    assert few["k"] == 3 and few["seeds"] == 2 and len(few["accuracy_per_seed"]) == 2
    assert few["accuracy"] == pytest.approx(sum(few["accuracy_per_seed"]) / 2)
    assert report["label_descriptions"]["neg"] == ["a negative review"]
    # A real sentence encoder sorts these rows from two descriptions alone (measured 0.958 on
    # the 24 test rows) and beats chance from 3 examples per class (measured 0.75: 0.667, 0.833).
    assert zero["accuracy"] >= 0.85 and few["accuracy"] >= 0.6, report

    r = lmtune(
        "eval",
        str(run),
        "--data",
        str(held_out),
        "--baselines",
        "--shots",
        "4",
        "--out",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    bl = json.loads((tmp_path / "ev" / "baselines.json").read_text())
    assert [row["method"] for row in bl["rows"]] == METHODS
    assert (
        bl["rows"][2]["accuracy"] == ev["accuracy"] and bl["rows"][2]["macro_f1"] == ev["macro_f1"]
    )
    assert (
        bl["rows"][1]["k"] == 4 and bl["rows"][1]["seeds"] == 2
    )  # --shots wins, seeds from the run
    assert bl["eval_rows"] == ev["rows"] == 40 and bl["data"] == str(held_out)
    assert "few-shot" in r.stdout and "fine-tuned" in r.stdout and "baselines.json" in r.stdout

    # Descriptions that miss a label are a user error naming the key, raised before any work.
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    run_cfg["baselines"]["label_descriptions"] = {"pos": "a positive review"}
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    with pytest.raises(
        UserError, match=r"baselines.label_descriptions.*no entry for label\(s\) neg"
    ):
        run_eval(run, held_out, tmp_path / "ev2", baselines=True)
    assert not (tmp_path / "ev2" / "eval.json").exists()


def test_causal_baselines_on_a_tiny_llama_classifier(tmp_path: Path) -> None:
    model = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(64))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(model), "max_length": 40},
        adapter={"type": "full"},
        data={"train": str(data), "split": {"eval": 0.25}},
        train={"epochs": 1, "eval_before": False},
        baselines={
            "enabled": True,
            "shots": 2,
            "seeds": 2,
            "label_words": {"pos": "great", "neg": "awful"},
            "prompt": "Review: {text}\nSentiment:",
        },
    )
    summary = run_training(cfg, quiet=True)
    run = Path(cfg.run.output_dir)
    report = summary["baselines"]
    assert report["base_kind"] == "causal" and report["data"] == "eval split"  # no test split here
    assert report["label_words"] == {"neg": "awful", "pos": "great"} and report["scoring"] == "mean"
    assert [r["method"] for r in report["rows"]] == METHODS
    assert (
        report["rows"][2]["accuracy"] == summary["best_eval"]["accuracy"]
    )  # the kept model, same rows
    # 4 demonstrations need ~60 tokens; max_length 40 leaves room for about one.
    assert any("did not fit model.max_length (40)" in n for n in report["notes"]), report["notes"]

    held_out = write_jsonl(tmp_path / "held.jsonl", sentiment_rows(12, seed=3))
    result = run_eval(run, held_out, tmp_path / "ev", baselines=True, shots=1)
    bl = json.loads((tmp_path / "ev" / "baselines.json").read_text())
    assert bl == result["baselines"] and bl["rows"][1]["k"] == 1
    assert bl["rows"][2]["accuracy"] == result["accuracy"]
    for row in bl["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0


def test_train_fails_fast_on_label_words_for_other_labels(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(24))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(tiny_causal_dir(tmp_path))},
        adapter={"type": "full"},
        data={"train": str(data)},
        baselines={"enabled": True, "label_words": {"positive": "great", "neg": "awful"}},
    )
    with pytest.raises(
        UserError,
        match=r"baselines.label_words.*positive are not labels.*no entry for label\(s\) pos",
    ):
        run_training(cfg, quiet=True)
    assert not (Path(cfg.run.output_dir) / "model").exists()  # nothing was trained
