"""WeightAverage: which steps enter the mean, the mean itself, swapping it in and out, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmtune.train.averaging import WeightAverage, averaging_start
from lmtune.train.logging import MetricsLog
from lmtune.train.loop import _judge_average


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen base, as under LoRA: never averaged
    return model


def _set(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model[1].parameters():
            p.fill_(value)


def test_start_and_schedule_include_the_last_step() -> None:
    assert averaging_start(0.34, 300) == 102
    assert averaging_start(0.0, 300) == 1 and averaging_start(0.999, 10) == 10
    avg = WeightAverage(_model(), start_step=3, every=2, total_steps=8)
    assert [s for s in range(1, 9) if avg.due(s)] == [3, 5, 7, 8]


def test_mean_of_trainable_snapshots_only() -> None:
    model = _model()
    frozen = model[0].weight.detach().clone()
    avg = WeightAverage(model, 1, 1, 10)
    assert avg.names == ["1.weight", "1.bias"]
    for value in (1.0, 2.0, 6.0):
        _set(model, value)
        avg.update(model)
    assert avg.count == 3
    for tensor in avg.mean.values():
        torch.testing.assert_close(tensor, torch.full_like(tensor, 3.0))
    with avg.applied(model):
        torch.testing.assert_close(model[1].bias, torch.full((2,), 3.0))
        torch.testing.assert_close(model[0].weight, frozen)
    torch.testing.assert_close(model[1].bias, torch.full((2,), 6.0))  # trained weights are back
    avg.copy_into(model)
    torch.testing.assert_close(model[1].weight, torch.full((2, 4), 3.0))


def test_saved_mean_resumes_to_the_same_average() -> None:
    model = _model()
    a, b = WeightAverage(model, 1, 1, 10), WeightAverage(model, 1, 1, 10)
    for value in (1.0, 2.0):
        _set(model, value)
        a.update(model)
    b.load(a.tensors(), a.count)
    _set(model, 9.0)
    a.update(model)
    b.update(model)
    for name in a.names:
        torch.testing.assert_close(a.mean[name], b.mean[name])
        torch.testing.assert_close(a.mean[name], torch.full_like(a.mean[name], 4.0))
    with pytest.raises(RuntimeError, match="does not train"):
        b.load({"0.weight": torch.zeros(4, 3)}, 1)


@pytest.mark.parametrize(
    ("mode", "best", "averaged", "kept"),
    [
        ("max", 0.90, 0.85, False),
        ("max", 0.90, 0.90, True),
        ("max", 0.90, 0.92, True),
        ("min", 0.30, 0.35, False),
        ("min", 0.30, 0.25, True),
        ("max", None, 0.50, True),
    ],
)
def test_average_is_kept_unless_a_snapshot_scored_higher(
    tmp_path: Path, mode: str, best: float | None, averaged: float, kept: bool
) -> None:
    model = _model()
    avg = WeightAverage(model, 1, 1, 10)
    _set(model, 2.0)
    avg.update(model)
    _set(model, 4.0)
    seen: list[float] = []

    def run_eval() -> dict[str, float]:
        seen.append(
            float(model[1].bias[0].detach())
        )  # evaluated with the averaged weights in place
        return {"score": averaged}

    log = MetricsLog(tmp_path / "metrics.jsonl")
    state = {"step": 7, "epoch": 1, "best": best}
    result = _judge_average(avg, model, run_eval, state, "score", mode, log)
    assert seen == [2.0] and float(model[1].bias[0].detach()) == 4.0
    assert result["kept"] is kept and result["snapshots"] == 1 and result["score"] == averaged
    assert result["eval"] == {
        "event": "eval",
        "step": 7,
        "epoch": 1,
        "score": averaged,
        "weight_average": True,
    }
    (event,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert event["event"] == "eval_average" and event["score"] == averaged and event["kept"] is kept


def test_without_eval_data_the_average_is_kept(tmp_path: Path) -> None:
    model = _model()
    avg = WeightAverage(model, 1, 1, 10)
    avg.update(model)
    result = _judge_average(
        avg,
        model,
        lambda: None,
        {"step": 3, "epoch": 0, "best": None},
        "eval_loss",
        "min",
        MetricsLog(tmp_path / "m.jsonl"),
    )
    assert result["kept"] is True and "eval" not in result
