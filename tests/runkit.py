"""Helpers for tests that run real training: tiny local model folders and small data files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForQuestionAnswering

from lmtune.config import Config
from tiny import (
    make_bert_tokenizer,
    make_causal,
    make_encoder_classifier,
    make_tokenizer,
    save_tiny,
    tiny_bert_config,
)

# Real public datasets live beside the repository (never copied into it): opt-in slow tests.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def needs_data(*paths: str) -> pytest.MarkDecorator:
    """Skip unless every ../shared/data/PATH exists; the reason names the absent ones."""
    missing = [p for p in paths if not (SHARED_DATA / p).exists()]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"../shared/data lacks {', '.join(missing)} (real datasets live beside the repo)",
    )


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor in a model folder's *.safetensors files (sharded or not), by name."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


POS = ["great", "wonderful", "lovely", "excellent", "happy"]
NEG = ["awful", "terrible", "sad", "broken", "poor"]
NOUNS = ["the movie", "this book", "the food", "our trip", "the show", "that song"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short labelled sentences a tiny model can learn (the label word decides)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POS if label == "pos" else NEG)
        rows.append({"text": f"{rng.choice(NOUNS)} was {word} {i}", "label": label})
    return rows


def instruction_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction rows with a deterministic answer (copy a word) the tiny LM can learn."""
    rng = random.Random(seed)
    words = POS + NEG
    rows = []
    for i in range(n):
        w = rng.choice(words)
        rows.append(
            {
                "instruction": f"Repeat the word {w}.",
                "input": "" if i % 3 else f"case {i}",
                "output": w,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_causal_dir(root: Path, arch: str = "llama") -> Path:
    """A local folder with a tiny random causal LM and its tokenizer (no pad token)."""
    tok = make_tokenizer(pad=False)
    return save_tiny(make_causal(arch, tok), tok, root / f"tiny-{arch}")


def tiny_bert_dir(root: Path) -> Path:
    """A local folder with a tiny random BERT and WordPiece tokenizer."""
    tok = make_bert_tokenizer()
    return save_tiny(make_encoder_classifier("bert", 2, tok), tok, root / "tiny-bert")


def config(tmp: Path, **sections: Any) -> Config:
    """A Config with quick defaults for tests, deep-merged with `sections`."""
    base: dict[str, Any] = {
        "run": {"output_dir": str(tmp / "run"), "seed": 1},
        "model": {"max_length": 160},
        "data": {"clean": {"pii": False, "secrets": False}, "split": {"eval": 0.2}},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "lr": 5e-3,
            "eval_batch_size": 16,
            "log_every": 1,
            "precision": "fp32",
            "max_grad_norm": 1.0,
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return Config.model_validate(base)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_events(run_dir: Path) -> list[dict[str, Any]]:
    """The train events of metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "train"]


def cli_exit(*args: str) -> int:
    """Run `lmtune ARGS` in this process like the console script (cheaper than a subprocess);
    returns the exit code."""
    import sys

    from lmtune.cli import main

    old, sys.argv = sys.argv, ["lmtune", *args]
    try:
        main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old


def run_cli(capsys: Any, *args: str) -> tuple[int, str]:
    """cli_exit(ARGS) and its stdout + stderr on one line (rich wraps long lines)."""
    code = cli_exit(*args)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


# ---- extractive QA: 'the NOUN is ADJ .' in filler text (tasks/test_qa, e2e) ----
QA_NOUNS = ["fox", "dog", "movie", "book", "weather", "park"]
QA_ADJS = ["quick", "brown", "lazy", "great", "terrible", "sunny", "light", "small"]
QA_FILLER = [
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
        noun, adj = rng.choice(QA_NOUNS), rng.choice(QA_ADJS)
        before = " ".join(rng.sample(QA_FILLER, rng.randint(0, 2)))
        after = " ".join(rng.sample(QA_FILLER, rng.randint(0, 1)))
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
    cfg = tiny_bert_config(tok)
    return save_tiny(BertForQuestionAnswering(cfg).eval(), tok, root / "tiny-bert-qa")
