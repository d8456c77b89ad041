"""Artifacts that travel: weight files readable as the umask says, README.md is lmtune's
card (not peft's template), adapter_config.json names the base as the config did, and an
adapter trained on a base without a pad token works in plain peft on that base, batched."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtune.config import AdapterConfig, Config, ModelConfig, dump_config
from lmtune.models.adapters import apply_adapter
from lmtune.models.export import load_trained, save_model
from lmtune.models.load import load_model, load_tokenizer
from lmtune.report.model_card import write_model_card
from tiny import make_causal, make_tokenizer, save_tiny


def _lora(base: str) -> tuple[torch.nn.Module, object]:
    """A LoRA model on `base` loaded as a run loads it, its adapter moved off zero."""
    mcfg = ModelConfig(name_or_path=base)
    tok = load_tokenizer(mcfg)
    model = apply_adapter(load_model(mcfg, "sft", tok), AdapterConfig(type="lora"), "sft")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, tok


@pytest.fixture
def no_pad_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local base whose tokenizer has no pad token and no unk distinct from eos (so the
    only tokens to pad with are eos or a new one), saved under a relative path."""
    monkeypatch.chdir(tmp_path)
    tok = copy.deepcopy(make_tokenizer())
    tok.unk_token = tok.eos_token
    save_tiny(make_causal("llama", tok), tok, tmp_path / "bases" / "tiny")
    return "bases/tiny"


def test_saved_adapter_files_travel(no_pad_base: str, tmp_path: Path) -> None:
    model, tok = _lora(no_pad_base)
    old = os.umask(0o022)
    try:
        save_model(model, tok, tmp_path / "run" / "model", extra={"base_model": no_pad_base})
    finally:
        os.umask(old)
    out = tmp_path / "run" / "model"
    for name in ("adapter_model.safetensors", "adapter_config.json", "lmtune_model.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert not (out / "README.md").exists()  # no peft template; the card comes at the end
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "bases/tiny"  # as the config wrote it
    meta = json.loads((out / "lmtune_model.json").read_text())
    assert meta["base_model_local"] is True and Path(meta["base_model"]).is_absolute()
    cfg = Config.model_validate({"task": "sft", "model": {"name_or_path": no_pad_base}})
    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg))
    card = write_model_card(tmp_path / "run", out).read_text()
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: peft\n") and readme.endswith(card)
    assert "base_model:" not in readme.split("---")[1]  # a local folder is no hub id
    assert "bases/tiny (a local folder, not a Hugging Face Hub id" in card
    assert "Model Card for Model ID" not in readme


def test_hub_ids_are_kept_as_given(no_pad_base: str, tmp_path: Path) -> None:
    model, tok = _lora(no_pad_base)
    save_model(model, tok, tmp_path / "m", extra={"base_model": "acme/tiny-llama"})
    adapter_cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "acme/tiny-llama"
    assert (
        json.loads((tmp_path / "m" / "lmtune_model.json").read_text())["base_model_local"] is False
    )


def test_plain_peft_generates_batched_on_the_original_base(
    no_pad_base: str, tmp_path: Path
) -> None:
    model, tok = _lora(no_pad_base)
    assert len(tok) == 600 and tok.pad_token_id == tok.eos_token_id  # no token was added
    save_model(model, tok, tmp_path / "m", extra={"base_model": no_pad_base})
    # Plain transformers + peft, as someone without lmtune would load it.
    ptok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ptok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(no_pad_base)
    plain = PeftModel.from_pretrained(base, tmp_path / "m").eval()
    prompts = ["The weather today is", "Hi"]
    batch = ptok(prompts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": ptok.pad_token_id}
    with torch.no_grad():
        batched = plain.generate(**batch, **kw)[:, batch["input_ids"].shape[1] :]
        ours, otok, _ = load_trained(tmp_path / "m")
        for i, p in enumerate(prompts):
            one = ptok(p, return_tensors="pt")
            alone = plain.generate(**one, **kw)[0, one["input_ids"].shape[1] :]
            torch.testing.assert_close(batched[i][: len(alone)], alone)
            mine = ours.generate(**otok(p, return_tensors="pt"), **kw)[
                0, one["input_ids"].shape[1] :
            ]
            torch.testing.assert_close(mine, alone)
