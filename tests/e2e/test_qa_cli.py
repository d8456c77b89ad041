"""End-to-end extractive QA: `lmtune train` and `lmtune eval` as subprocesses (like a user),
then `predict` and `export` through the same CLI app in-process (saves two interpreter starts)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForQuestionAnswering

from lmtune.cli import app
from lmtune.models.export import load_trained
from runkit import tiny_bert_dir

ROOT = Path(__file__).resolve().parents[2]
NOUNS = ["fox", "dog", "movie", "book", "weather", "park"]
ADJS = ["quick", "brown", "lazy", "great", "terrible", "sunny"]
FILLER = "the quick brown fox jumps over the lazy dog . in the morning we walk to the park ."


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


def squad_v2(path: Path, n_articles: int, seed: int) -> Path:
    """SQuAD 2.0 JSON: 'the NOUN is ADJ .' facts; a third of the questions ask about a noun
    the paragraph does not mention (unanswerable); every third context spans several windows."""
    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        paras = []
        for p in range(3):
            noun, adj = rng.choice(NOUNS), rng.choice(ADJS)
            context = f"the {noun} is {adj} . " + (FILLER + " ") * (p == 2) * 2 + FILLER
            qas = [
                {
                    "id": f"{seed}-{a}-{p}",
                    "question": f"what is the {noun} ?",
                    "is_impossible": False,
                    "answers": [{"text": adj, "answer_start": len(f"the {noun} is ")}],
                }
            ]
            other = next(x for x in NOUNS if x != noun)
            if p == 1:
                qas.append(
                    {
                        "id": f"{seed}-{a}-{p}-x",
                        "question": f"what is the {other} ?",
                        "is_impossible": True,
                        "answers": [],
                    }
                )
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"article {seed}-{a}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


@pytest.mark.timeout(900)  # two interpreter starts: slow only on a crowded machine
def test_qa_train_eval_predict_export(tmp_path: Path) -> None:
    train = squad_v2(tmp_path / "train.json", 12, seed=1)
    held_out = squad_v2(tmp_path / "dev.json", 3, seed=2)
    run = tmp_path / "run"
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(f"""
task: qa
run: {{output_dir: {run}, seed: 0}}
model: {{name_or_path: {tiny_bert_dir(tmp_path)}, max_length: 48}}
adapter: {{type: lora, r: 8, alpha: 16, dropout: 0.0}}
data: {{train: {train}, split: {{eval: 0.25, group_by: title}}, clean: {{pii: false, secrets: false, dedupe: false}}}}
qa: {{doc_stride: 12, max_answer_length: 5}}
train: {{epochs: 3, batch_size: 8, lr: 0.01, precision: fp32, log_every: 2,
         early_stopping: {{metric: f1, mode: max}}}}
""")
    r = lmtune("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"] == {"train": 36, "eval": 12}  # whole articles: 3 of 12 for eval
    splits = {
        s: {json.loads(x)["title"] for x in (run / "data" / f"{s}.jsonl").read_text().splitlines()}
        for s in ("train", "eval")
    }
    assert not splits["train"] & splits["eval"]
    assert summary["best_eval"]["eval_windows"] > 12  # long contexts became several windows
    meta = json.loads((run / "model" / "lmtune_model.json").read_text())
    assert meta["qa"]["allow_no_answer"] is True  # the training data has unanswerable questions

    r = lmtune("eval", str(run), "--data", str(held_out), "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["rows"] == 12 and ev["HasAns_total"] == 9 and ev["NoAns_total"] == 3
    for k in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "best_f1", "eval_loss"):
        assert 0 <= ev[k] <= 100 if k != "eval_loss" else ev[k] > 0, k
    assert ev["exact"] == (ev["HasAns_exact"] * 9 + ev["NoAns_exact"] * 3) / 12
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert set(preds) == {
        q["id"]
        for a in json.loads(held_out.read_text())["data"]
        for p in a["paragraphs"]
        for q in p["qas"]
    }
    errors = [json.loads(x) for x in (tmp_path / "ev" / "errors.jsonl").read_text().splitlines()]
    assert [e["f1"] for e in errors] == sorted(e["f1"] for e in errors)
    assert all(preds[e["id"]] == e["predicted"] for e in errors)

    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"context": "the dog is lazy . " + FILLER, "question": "what is the dog ?"})
        + "\n"
    )
    app(
        ["predict", str(run), "--input", str(questions), "--out", str(tmp_path / "p.jsonl")],
        standalone_mode=False,
    )
    (pred,) = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    ctx = "the dog is lazy . " + FILLER
    assert pred["answer"] == "" or ctx[pred["answer_start"] :].startswith(pred["answer"])

    app(["export", str(run), str(tmp_path / "merged")], standalone_mode=False)
    plain = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "merged")).eval()
    ours, tok, _ = load_trained(run / "model")
    enc = tok("what is the dog ?", ctx, return_tensors="pt")
    with torch.no_grad():
        a, b = plain(**enc), ours(**enc)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-4)
    assert torch.allclose(a.end_logits, b.end_logits, atol=1e-4)
