"""train.average through the real loop: the kept model is the mean of the snapshots, the mean
survives a kill + resume, and report/card/summary say what happened."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lmtune.train.averaging as averaging
from lmtune.train.run import run_training
from runkit import config, folder_tensors, sentiment_rows, tiny_bert_dir, write_jsonl


def test_kept_average_is_the_mean_of_the_snapshots(tmp_path: Path, monkeypatch) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    original = averaging.WeightAverage.update

    def spy(self, model):  # record exactly what enters the mean
        snapshots.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        )
        original(self, model)

    monkeypatch.setattr(averaging.WeightAverage, "update", spy)
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(64))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "full"},
        data={"train": str(data), "split": {"eval": 0.0}},
        train={"epochs": 2, "average": {"start": 0.5, "every": 3}},
    )
    summary = run_training(cfg, quiet=True)
    # 8 steps/epoch x 2: snapshots from step 8 every 3 steps, plus the last step: 8, 11, 14, 16
    assert summary["train_steps"] == 16
    assert summary["weight_average"] == {"snapshots": 4, "from_step": 8, "every": 3, "kept": True}
    assert len(snapshots) == 4
    saved = folder_tensors(Path(summary["model_dir"]))
    for name in snapshots[0]:
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        torch.testing.assert_close(saved[name], mean, atol=1e-6, rtol=0)
    run = Path(cfg.run.output_dir)
    assert "weight average" in (run / "report.html").read_text()
    assert (
        "mean of 4 snapshots, every 3 steps from step 8"
        in (run / "model" / "MODEL_CARD.md").read_text()
    )


def test_average_resumes_after_a_kill_and_is_judged_on_eval(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    common = dict(
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        data={"train": str(data)},
    )
    train = {
        "epochs": 3,
        "save_every": 4,
        "eval_every": 4,
        "average": {"start": 0.2, "every": 2},
        "early_stopping": {"metric": "accuracy", "mode": "max"},
    }
    full = config(tmp_path / "full", **common, train=train)
    s_full = run_training(full, quiet=True)
    part = config(tmp_path / "part", **common, train=train)
    assert run_training(part, quiet=True, stop_after=7) == {
        "interrupted_at": 7
    }  # checkpoint: step 4
    s_part = run_training(part, resume=True, quiet=True)
    assert s_part["weight_average"] == s_full["weight_average"]
    a, b = folder_tensors(Path(s_full["model_dir"])), folder_tensors(Path(s_part["model_dir"]))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    avg = s_full["weight_average"]
    assert avg["snapshots"] >= 3 and "accuracy" in avg
    events = [
        json.loads(x)
        for x in (Path(full.run.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    (judged,) = [e for e in events if e["event"] == "eval_average"]
    assert judged["accuracy"] == avg["accuracy"] and judged["kept"] == avg["kept"]
    best_snapshot = max(e["accuracy"] for e in events if e["event"] == "eval")
    assert avg["kept"] == (avg["accuracy"] >= best_snapshot)
    if avg["kept"]:
        assert s_full["best_eval"]["weight_average"] is True
        assert s_full["best_metric_value"] == avg["accuracy"]
