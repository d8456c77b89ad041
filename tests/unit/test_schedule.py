"""LR schedules and AdamW parameter groups."""

from __future__ import annotations

import pytest
import torch

from lmtune.train.schedule import layer_depths, lr_lambda, param_groups, warmup_steps
from tiny import make_encoder_classifier


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


def test_layer_depths_across_architectures() -> None:
    bert = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.1.output.dense.bias",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ]
    assert list(layer_depths(bert).values()) == [0, 0, 1, 2, 3, 3]
    llama = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert list(layer_depths(llama).values()) == [0, 1, 3, 4, 4]
    gpt2 = [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.ln_f.weight",
    ]
    assert list(layer_depths(gpt2).values()) == [0, 0, 1, 2, 3]
    # LoRA wraps names but keeps the block index.
    lora = ["base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.default.weight"]
    assert layer_depths(lora)[lora[0]] == 6


def test_layer_lr_decay_scales_each_block() -> None:
    model = make_encoder_classifier()  # 2 blocks: depths 0 (embeddings), 1, 2, 3 (pooler, head)
    groups = param_groups(
        model, weight_decay=0.0, lr=1.0, head_lr=10.0, head_names=["classifier"], layer_decay=0.5
    )
    lr_of = {
        n: g["lr"]
        for n, p in model.named_parameters()
        for g in groups
        if any(p is q for q in g["params"])
    }
    assert lr_of["bert.embeddings.word_embeddings.weight"] == 0.125
    assert lr_of["bert.encoder.layer.0.attention.self.query.weight"] == 0.25
    assert lr_of["bert.encoder.layer.1.attention.self.query.weight"] == 0.5
    assert lr_of["bert.pooler.dense.weight"] == 1.0
    assert lr_of["classifier.weight"] == 10.0  # a fresh head keeps its own LR
    off = param_groups(model, 0.0, 1.0, 10.0, ["classifier"])
    assert {g["lr"] for g in off} == {1.0, 10.0}
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in off)
