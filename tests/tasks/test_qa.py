"""Task tier: a tiny BERT learns synthetic extractive QA through run_training (task qa)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForQuestionAnswering

from lmtune.config import Config
from lmtune.tasks.qa import QATask
from lmtune.train.run import run_training
from runkit import config, train_events
from tiny import make_bert_tokenizer, save_tiny

NOUNS = ["fox", "dog", "movie", "book", "weather", "park"]
ADJS = ["quick", "brown", "lazy", "great", "terrible", "sunny", "light", "small"]
FILLER = [
    "the quick brown fox jumps over the lazy dog .",
    "in the morning we walk to the park .",
    "she sells sea shells by the sea shore .",
    "data cleaning removes duplicates .",
]


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    """Flat qa rows: 'the NOUN is ADJ .' among filler sentences; 'what is the NOUN ?' -> ADJ."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        noun, adj = rng.choice(NOUNS), rng.choice(ADJS)
        before = " ".join(rng.sample(FILLER, rng.randint(0, 2)))
        after = " ".join(rng.sample(FILLER, rng.randint(0, 1)))
        context = f"{before} the {noun} is {adj} . {after}".strip()
        start = context.index(f"the {noun} is {adj}") + len(f"the {noun} is ")
        rows.append(
            {
                "id": f"q{i}",
                "title": f"t{i % 5}",
                "context": context,
                "question": f"what is the {noun} ?",
                "answers": {"text": [adj], "answer_start": [start]},
            }
        )
    return rows


def tiny_qa_dir(root: Path) -> Path:
    """A 2-layer, hidden-32 BERT with a random span head, saved as a local model folder."""
    tok = make_bert_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tok.pad_token_id,
    )
    return save_tiny(BertForQuestionAnswering(cfg).eval(), tok, root / "tiny-bert-qa")


def test_tiny_bert_learns_span_extraction_with_lora(tmp_path: Path) -> None:
    rows = qa_rows(48)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(
        tmp_path,
        task="qa",
        model={"name_or_path": str(tiny_qa_dir(tmp_path)), "max_length": 64},
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        qa={"doc_stride": 16, "max_answer_length": 4},
        # eval = the training rows: the test asks whether the model fits what it saw
        data={"eval": str(data), "train": str(data)},
        train={
            "epochs": 8,
            "lr": 3e-2,
            "eval_each_epoch": False,
            "early_stopping": {"metric": "exact", "mode": "max"},
        },
    )
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < 0.5 * events[0]["loss"], (events[0]["loss"], events[-1]["loss"])
    before, best = summary["eval_before"]["eval"], summary["best_eval"]
    assert before["exact"] < 20.0 and best["exact"] >= before["exact"] + 50.0, (before, best)
    assert best["f1"] >= best["exact"] and best["eval_loss"] < before["eval_loss"]
    # The span head trains in full beside the adapters and is saved with them.
    saved = Path(summary["model_dir"])
    weights = load_file(str(saved / "adapter_model.safetensors"))
    assert any("qa_outputs" in k for k in weights)
    meta = json.loads((saved / "lmtune_model.json").read_text())
    assert meta["task"] == "qa" and meta["qa"]["allow_no_answer"] is False


def test_batch_loss_ignores_padding_and_sums_windows(tmp_path: Path) -> None:
    """Loss of a padded batch == sum of each window's loss alone (what 4x2 == 8x1 needs)."""
    model = BertForQuestionAnswering.from_pretrained(str(tiny_qa_dir(tmp_path)))
    cfg = Config.model_validate(
        {"task": "qa", "model": {"max_length": 40}, "qa": {"doc_stride": 8}}
    )
    task = QATask(make_bert_tokenizer(), cfg)
    feats = [f for r in qa_rows(6, seed=3) for f in task.encode(r)]
    assert len({f["length"] for f in feats}) > 1  # different lengths: the batch is padded
    with torch.no_grad():
        total, units = task.loss(model, task.collate(feats))
        alone = sum(float(task.loss(model, task.collate([f]))[0]) for f in feats)
    assert float(units) == len(feats)
    assert float(total) == pytest.approx(alone, rel=1e-5)
