"""Invariants that catch silent training bugs: accumulation, resume, early stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmtune.train.run import run_training
from runkit import (
    config,
    folder_tensors,
    instruction_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    write_jsonl,
)


def _final(run: Path) -> dict[str, torch.Tensor]:
    return folder_tensors(run / "model")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.mark.parametrize("bucketing", [True, False])
def test_grad_accum_4x2_equals_8x1_sft(tmp_path: Path, bucketing: bool) -> None:
    """Token-weighted SFT loss: micro-batches of different token counts must not bias the mean."""
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_rows(64))
    common = dict(
        task="sft",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "full"},
        data={
            "train": str(data),
            "format": "instruction",
            "template": "alpaca",
            "bucketing": bucketing,
        },
    )
    a = config(tmp_path / "a", **common, train={"batch_size": 8, "grad_accum": 1, "epochs": 1})
    b = config(tmp_path / "b", **common, train={"batch_size": 4, "grad_accum": 2, "epochs": 1})
    sa, sb = run_training(a, quiet=True), run_training(b, quiet=True)
    assert sa["train_steps"] == sb["train_steps"] > 2
    assert sa["final_train_loss"] == pytest.approx(sb["final_train_loss"], abs=1e-5)
    _assert_same(_final(Path(a.run.output_dir)), _final(Path(b.run.output_dir)), atol=1e-5)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    common = dict(
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={
            "type": "lora",
            "r": 4,
            "alpha": 8,
            "dropout": 0.1,
        },  # dropout: RNG must resume too
        data={"train": str(data)},
    )
    train = {"epochs": 3, "save_every": 4, "eval_every": 4}
    full = config(tmp_path / "full", **common, train=train)
    run_training(full, quiet=True)
    part = config(tmp_path / "part", **common, train=train)
    out = run_training(
        part, quiet=True, stop_after=6
    )  # "killed" after step 6; last checkpoint is step 4
    assert out == {"interrupted_at": 6}
    resumed = run_training(part, resume=True, quiet=True)
    assert resumed["train_steps"] > 6
    _assert_same(_final(Path(full.run.output_dir)), _final(Path(part.run.output_dir)), atol=1e-6)


def test_early_stopping_keeps_best(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(80))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "full"},
        data={"train": str(data)},
        train={
            "epochs": 30,
            "lr": 5e-2,
            "eval_every": 2,
            "eval_each_epoch": False,
            "early_stopping": {"metric": "eval_loss", "mode": "min", "patience": 2},
        },
    )
    s = run_training(cfg, quiet=True)
    assert s["stopped_early"]
    assert s["train_steps"] < 30 * 8
    assert s["best_step"] <= s["train_steps"] - 4
    assert s["best_eval"]["eval_loss"] == pytest.approx(s["best_metric_value"])


def test_every_epoch_gets_its_own_shuffle_and_resume_crosses_epochs(tmp_path: Path) -> None:
    """Epoch e trains on plan_steps(..., epoch=e) (a new seeded order), logs epoch e, and a run
    killed in its second epoch resumes to the uninterrupted weights."""
    import lmtune.train.loop as loop

    planned: list[int] = []
    original = loop.plan_steps

    def spy(lengths, step_batch, seed, epoch, bucketing):
        planned.append(epoch)
        return original(lengths, step_batch, seed, epoch, bucketing)

    loop.plan_steps = spy
    try:
        model_dir = tiny_bert_dir(tmp_path)
        data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(60))
        common = dict(
            task="classification",
            model={"name_or_path": str(model_dir)},
            adapter={"type": "full"},
            data={"train": str(data), "split": {"eval": 0.0}},
        )
        train = {
            "epochs": 3,
            "batch_size": 16,
            "save_every": 2,
            "log_every": 1,
            "eval_each_epoch": False,
        }
        full = config(tmp_path / "full", **common, train=train)
        summary = run_training(full, quiet=True)
        assert planned == [0, 1, 2] and summary["train_steps"] == 9
        import json

        events = [
            json.loads(x)
            for x in (Path(full.run.output_dir) / "metrics.jsonl").read_text().splitlines()
        ]
        assert [e["epoch"] for e in events if e["event"] == "train"] == [0] * 3 + [1] * 3 + [2] * 3
        part = config(tmp_path / "part", **common, train=train)
        assert run_training(part, quiet=True, stop_after=5) == {
            "interrupted_at": 5
        }  # checkpoint: step 4
        run_training(part, resume=True, quiet=True)
    finally:
        loop.plan_steps = original
    _assert_same(_final(Path(full.run.output_dir)), _final(Path(part.run.output_dir)), atol=1e-6)
