"""LR schedules and AdamW parameter groups."""

from __future__ import annotations

import pytest
import torch

from lmtune.train.schedule import lr_lambda, param_groups, warmup_steps


def test_linear_warmup_then_decay_to_zero() -> None:
    f = lr_lambda("linear", warmup=4, total=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(8) == pytest.approx(0.5)
    assert f(12) == 0.0


def test_cosine_and_constant() -> None:
    c = lr_lambda("cosine", warmup=0, total=10)
    assert c(0) == pytest.approx(1.0)
    assert c(5) == pytest.approx(0.5)
    assert c(10) == pytest.approx(0.0)
    k = lr_lambda("constant", warmup=2, total=10)
    assert [k(0), k(1), k(2), k(9)] == [0.5, 1.0, 1.0, 1.0]


def test_warmup_steps_override_ratio() -> None:
    assert warmup_steps(100, 0.1, 0) == 10
    assert warmup_steps(100, 0.1, 3) == 3


def test_no_weight_decay_on_bias_and_norm_and_head_lr() -> None:
    model = torch.nn.Sequential()
    model.add_module("dense", torch.nn.Linear(4, 4))
    model.add_module("LayerNorm", torch.nn.LayerNorm(4))
    model.add_module("classifier", torch.nn.Linear(4, 2))
    groups = param_groups(model, weight_decay=0.1, lr=1e-5, head_lr=1e-3, head_names=["classifier"])
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.dense.weight)]["weight_decay"] == 0.1
    assert by_id[id(model.dense.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.LayerNorm.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.classifier.weight)]["lr"] == 1e-3
    assert by_id[id(model.dense.weight)]["lr"] == 1e-5
    assert sum(len(g["params"]) for g in groups) == 6
