"""Which weights train under full / head / lora / dora, counted against hand formulas."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers.pytorch_utils import Conv1D

from lmtune.config import AdapterConfig
from lmtune.errors import UserError
from lmtune.models.adapters import (
    DEFAULT_TARGETS,
    apply_adapter,
    count_parameters,
    head_module_names,
)
from tiny import make_bert_tokenizer, make_causal, make_encoder_classifier, make_tokenizer

EXPECTED_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
}


def build(arch: str):
    if arch == "bert":
        return make_encoder_classifier(tokenizer=make_bert_tokenizer()), "classification"
    return make_causal(arch, make_tokenizer(pad=True)), "sft"


def in_out(mod: torch.nn.Module) -> tuple[int, int]:
    if isinstance(mod, Conv1D):  # GPT-2 stores weight as (in, out)
        return mod.weight.shape[0], mod.weight.shape[1]
    return mod.in_features, mod.out_features


def targeted(model: torch.nn.Module, arch: str) -> list[torch.nn.Module]:
    suffixes = set(EXPECTED_TARGETS[arch])
    heads = set(head_module_names(model))
    return [
        m
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in suffixes
        and name.split(".")[0] not in heads
        and isinstance(m, (torch.nn.Linear, Conv1D))
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "bert"])
def test_auto_targets_exist_and_lora_counts(arch: str):
    assert DEFAULT_TARGETS[arch] == EXPECTED_TARGETS[arch]
    model, task = build(arch)
    _, base_total = count_parameters(model)
    modules = targeted(model, arch)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if any(m is t for t in modules)}
    assert names == set(EXPECTED_TARGETS[arch])  # every default target is a real module here
    r = 4
    lora_params = sum(r * sum(in_out(m)) for m in modules)
    head = sum(p.numel() for p in model.classifier.parameters()) if task == "classification" else 0

    peft_model = apply_adapter(model, AdapterConfig(type="lora", r=r), task)
    assert isinstance(peft_model, PeftModel)
    assert sorted(peft_model.peft_config["default"].target_modules) == sorted(
        EXPECTED_TARGETS[arch]
    )
    trainable, total = count_parameters(peft_model)
    # classification: the fresh classifier trains in full (modules_to_save keeps a trainable copy).
    assert trainable == lora_params + head
    assert total == base_total + lora_params + head


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_dora_adds_one_magnitude_per_output(arch: str):
    model, task = build(arch)
    modules = targeted(model, arch)
    expected = sum(2 * sum(in_out(m)) + in_out(m)[1] for m in modules)  # r=2 + magnitude vector
    head = sum(p.numel() for p in model.classifier.parameters()) if task == "classification" else 0
    trainable, _ = count_parameters(apply_adapter(model, AdapterConfig(type="dora", r=2), task))
    assert trainable == expected + head


def test_head_only_trains_the_classifier():
    model, _ = build("bert")
    model = apply_adapter(model, AdapterConfig(type="head"), "classification")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert count_parameters(model)[0] == 32 * 2 + 2
    llama, _ = build("llama")
    llama = apply_adapter(llama, AdapterConfig(type="head"), "sft")
    assert [n for n, p in llama.named_parameters() if p.requires_grad] == ["lm_head.weight"]


def test_full_trains_everything_and_counts_tied_weights_once():
    model, _ = build("gpt2")
    model.requires_grad_(False)
    model = apply_adapter(model, AdapterConfig(type="full"), "sft")
    trainable, total = count_parameters(model)
    assert trainable == total
    # GPT-2 ties lm_head to wte: counted once.
    assert total == sum(p.numel() for n, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_lora_classifier_head_stays_trainable_and_heads_found():
    model, _ = build("bert")
    assert head_module_names(model) == ["classifier"]
    peft_model = apply_adapter(model, AdapterConfig(type="lora"), "classification")
    assert head_module_names(peft_model) == ["classifier"]
    trainable = [
        n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n
    ]
    assert trainable == [
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    ]
    assert head_module_names(make_causal("qwen2", make_tokenizer())) == ["lm_head"]


def test_explicit_targets_are_checked():
    model, _ = build("llama")
    peft_model = apply_adapter(
        model, AdapterConfig(type="lora", target_modules=["q_proj", "v_proj"]), "sft"
    )
    assert sorted(peft_model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    model, _ = build("llama")
    with pytest.raises(UserError, match=r"\['qproj'\] match no linear layer"):
        apply_adapter(model, AdapterConfig(type="lora", target_modules=["qproj"]), "sft")
    model, _ = build("gpt2")
    peft_model = apply_adapter(
        model, AdapterConfig(type="lora", target_modules="all-linear"), "sft"
    )
    assert count_parameters(peft_model)[0] > 0
