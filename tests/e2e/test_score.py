"""`lmtune score` through the real CLI on a tiny reward model trained in the test, and the
single-response encoding it uses checked against the reward task's training encoding."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.config import Config
from lmtune.evaluate.run import run_eval
from lmtune.evaluate.score import encode_response
from lmtune.tasks.reward import RewardTask
from runkit import NEG, NOUNS, POS, tiny_bert_dir, write_jsonl
from tiny import make_bert_tokenizer, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


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


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": f"How was {noun}?",
            "chosen": f"{noun} was {rng.choice(POS)}",
            "rejected": f"{noun} was {rng.choice(NEG)}",
        }
        for noun in (rng.choice(NOUNS) for _ in range(n))
    ]


def test_score_pairs_and_responses(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", _pairs(160, 0))
    run = tmp_path / "rm"
    model = tiny_bert_dir(tmp_path)
    r = lmtune(
        "train",
        "configs/reward_minilm.yaml",
        f"model.name_or_path={model}",
        f"data.train={train}",
        "data.format=preference",
        f"run.output_dir={run}",
        "model.max_length=64",
        "train.epochs=2",
        "train.lr=5e-3",
        "train.head_lr=null",
        "train.batch_size=8",
        "train.eval_every=0",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr

    held_out = _pairs(30, 1)
    rows = held_out + [
        {"prompt": p["prompt"], "response": p["chosen"], "id": i}
        for i, p in enumerate(held_out[:5])
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    r = lmtune("score", str(run), "--input", str(inp), "--out", str(out))
    assert r.returncode == 0, r.stderr
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(scored) == 35
    pairs, singles = scored[:30], scored[30:]
    for row in pairs:
        assert row["margin"] == pytest.approx(row["score_chosen"] - row["score_rejected"], abs=2e-6)
    accuracy = sum(row["margin"] > 0 for row in pairs) / len(pairs)
    # The same numbers as `lmtune eval` (the training-time encoding) on the same pairs.
    ev = run_eval(run, write_jsonl(tmp_path / "pairs.jsonl", held_out), tmp_path / "ev")
    assert accuracy == pytest.approx(ev["pairwise_accuracy"]) and accuracy >= 0.8
    assert sum(row["margin"] for row in pairs) / 30 == pytest.approx(ev["mean_margin"], abs=1e-5)
    assert "pairwise_accuracy" in r.stdout and "written to" in r.stdout
    # A response scores the same alone as inside a pair; other columns pass through.
    # (Equal up to the batch's padding: the fused attention kernel rounds per batch shape.)
    assert [s["score"] for s in singles] == pytest.approx(
        [p["score_chosen"] for p in pairs[:5]], abs=1e-5
    )
    assert [s["id"] for s in singles] == [0, 1, 2, 3, 4]

    r = lmtune("score", str(run), "--input", str(write_jsonl(tmp_path / "one.jsonl", rows[30:31])))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["score"] == singles[0]["score"]

    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"prompt": "x"}, {"response": "y"}])
    r = lmtune("score", str(run), "--input", str(bad))
    assert r.returncode == 2 and "2 row(s) cannot be scored" in r.stderr
    assert "line 2" in r.stderr and "line 3" in r.stderr and "Traceback" not in r.stderr
    r = lmtune("score", str(tmp_path), "--input", str(inp))
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["bert", "causal"])
def test_single_response_encoding_matches_training(kind: str) -> None:
    tok = make_bert_tokenizer() if kind == "bert" else make_tokenizer(pad=True)
    cfg = Config.model_validate({"task": "reward", "model": {"max_length": 64}})
    task = RewardTask(tok, cfg)
    for row in _pairs(10, 2) + [
        {
            "prompt": [{"role": "user", "content": "Hello there"}],
            "chosen": "fine thanks",
            "rejected": "go away",
        }
    ]:
        feat = task.encode(row)
        for side in ("chosen", "rejected"):
            one = encode_response(task, row["prompt"], row[side])
            assert one["input_ids"] == feat[f"{side}_input_ids"]
            if "token_type_ids" in one:
                assert one["token_type_ids"] == feat[f"{side}_token_type_ids"]
    long = {"prompt": "the weather today is sunny " * 20, "chosen": "the movie was great " * 20}
    ids = encode_response(task, long["prompt"], long["chosen"])["input_ids"]
    assert len(ids) == 64  # too long for training; scoring keeps the prompt end and response start
