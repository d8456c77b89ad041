"""Forgetting measures, L2-SP/EWC penalties and overfitting flags against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from lmtune.config import Config, ModelConfig, load_config
from lmtune.data.templates import _bos
from lmtune.errors import UserError
from lmtune.evaluate.forgetting import (
    build_probe,
    load_mlm,
    overfitting_flags,
    resolve_prior,
    text_chunks,
)
from lmtune.models.adapters import apply_adapter, head_module_names
from lmtune.models.load import load_model, load_tokenizer
from lmtune.train.regularize import (
    build_regularizer,
    diagonal_fisher,
    ewc_penalty,
    l2sp_penalty,
    normalize_fisher,
    penalized_parameters,
)
from runkit import tiny_bert_dir, tiny_causal_dir
from tiny import make_bert_tokenizer, save_tiny

TEXT = ["the movie was great and the food was lovely", "this book was awful", "our trip was happy"]


# ---------------------------------------------------------------- penalties


def test_l2sp_value_and_gradient_by_hand() -> None:
    w = {
        "a": torch.tensor([1.0, 2.0], requires_grad=True),
        "b": torch.tensor([[3.0]], requires_grad=True),
    }
    w0 = {"a": torch.tensor([0.5, 2.5]), "b": torch.tensor([[1.0]])}
    pen = l2sp_penalty(w, w0, weight=0.1)
    # 0.1 * (0.25 + 0.25 + 4) = 0.45; d/dw = 2 * 0.1 * (w - w0)
    assert float(pen.detach()) == pytest.approx(0.45)
    pen.backward()
    assert w["a"].grad.tolist() == pytest.approx([0.1, -0.1])
    assert w["b"].grad.item() == pytest.approx(0.4)


def test_ewc_value_and_gradient_by_hand() -> None:
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True)}
    w0 = {"a": torch.tensor([0.0, 0.0])}
    fisher = {"a": torch.tensor([3.0, 0.5])}
    pen = ewc_penalty(w, w0, fisher, weight=2.0)
    # 2 * (3 * 1 + 0.5 * 4) = 10; d/dw = 2 * 2 * F * (w - w0) = [12, 4]
    assert float(pen.detach()) == pytest.approx(10.0)
    pen.backward()
    assert w["a"].grad.tolist() == pytest.approx([12.0, 4.0])


def test_diagonal_fisher_is_mean_squared_per_sample_gradient() -> None:
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])]
    # loss_i = (w . x_i)^2 -> grad_i = 2 (w . x_i) x_i
    fisher = diagonal_fisher({"w": w}, ((w @ x) ** 2 for x in xs))
    grads = [2 * float(w.detach() @ x) * x for x in xs]
    expect = (grads[0] ** 2 + grads[1] ** 2) / 2
    assert fisher["w"].tolist() == pytest.approx(expect.tolist())
    assert w.grad is None  # autograd.grad: the optimizer's .grad stays untouched
    norm = normalize_fisher({"w": fisher["w"], "v": torch.zeros(2)})
    assert float(torch.cat([norm["w"], norm["v"]]).mean()) == pytest.approx(1.0)
    with pytest.raises(UserError, match="Fisher is zero"):
        normalize_fisher({"w": torch.zeros(3)})


def test_penalty_excludes_a_classifier_head_but_not_an_lm_head(tmp_path: Path) -> None:
    bert = load_model(
        ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path))),
        "classification",
        make_bert_tokenizer(),
        labels=["a", "b"],
    )
    names = penalized_parameters(bert, head_module_names(bert))
    assert names and not any(n.startswith("classifier") for n in names)
    assert "bert.embeddings.word_embeddings.weight" in names
    lora = apply_adapter(bert, Config(adapter={"r": 2}).adapter, "classification")
    lora_names = penalized_parameters(lora, head_module_names(lora))
    assert lora_names and all("lora_" in n for n in lora_names)  # the head's trainable copy is out
    causal_dir = tiny_causal_dir(tmp_path, "gpt2")
    tok = load_tokenizer(ModelConfig(name_or_path=str(causal_dir)))
    lm = load_model(ModelConfig(name_or_path=str(causal_dir)), "sft", tok)
    lm_names = penalized_parameters(lm, head_module_names(lm))
    # GPT-2 ties lm_head to the input embeddings: pre-trained, so it is kept in the penalty.
    assert "transformer.wte.weight" in lm_names


def test_regularizer_is_zero_at_the_anchor_and_none_when_off(tmp_path: Path) -> None:
    bert = load_model(
        ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path))),
        "classification",
        make_bert_tokenizer(),
        labels=["a", "b"],
    )
    assert build_regularizer(bert, ["classifier"], l2sp=0.0, ewc=0.0) is None
    reg = build_regularizer(bert, ["classifier"], l2sp=0.5, ewc=0.0)
    assert float(reg(bert).detach()) == 0.0
    with torch.no_grad():
        bert.bert.pooler.dense.bias.add_(0.1)
        bert.classifier.bias.add_(5.0)  # the head moves freely
    n = bert.bert.pooler.dense.bias.numel()
    assert float(reg(bert).detach()) == pytest.approx(0.5 * n * 0.01, rel=1e-5)
    with pytest.raises(UserError, match="needs forgetting.reference"):
        build_regularizer(bert, ["classifier"], l2sp=0.0, ewc=1.0)


# ---------------------------------------------------------------- measures


def _cfg(tmp_path: Path, model: Path, **forgetting) -> Config:
    return Config.model_validate(
        {
            "task": forgetting.pop("task", "classification"),
            "model": {"name_or_path": str(model), "max_length": 32},
            "forgetting": forgetting,
        }
    )


def test_perplexity_matches_a_hand_loop(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TEXT * 4))
    cfg = _cfg(tmp_path, model_dir, task="sft", reference=str(ref), max_tokens=70, batch_size=2)
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, "sft", tok).eval()
    chunks = text_chunks(TEXT * 4, tok, 32, 70)
    bos = _bos(tok)
    assert [len(c) for c in chunks][:2] == [32, 32] and all(c[: len(bos)] == bos for c in chunks)
    assert sum(len(c) - len(bos) for c in chunks) == 70  # max_tokens of text, BOS on each chunk
    nll, n = 0.0, 0
    with torch.no_grad():
        for c in chunks:
            logits = model(torch.tensor([c])).logits[0, :-1]
            nll += float(
                torch.nn.functional.cross_entropy(logits, torch.tensor(c[1:]), reduction="sum")
            )
            n += len(c) - 1
    probe = build_probe(cfg, tok, model)
    got = probe.score(model)
    assert probe.measure == "perplexity" and not probe.higher_is_better
    assert got["tokens"] == n
    assert got["value"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def _tiny_mlm_dir(tmp_path: Path) -> Path:
    tok = make_bert_tokenizer()
    torch.manual_seed(3)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tok.pad_token_id,
        )
    )
    return save_tiny(mlm, tok, tmp_path / "mlm")


def test_pseudo_perplexity_matches_a_hand_loop(tmp_path: Path) -> None:
    mlm_dir = _tiny_mlm_dir(tmp_path)
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(TEXT))
    cfg = _cfg(tmp_path, mlm_dir, reference=str(ref), batch_size=5)
    tok = load_tokenizer(cfg.model)
    clf = load_model(
        cfg.model, "classification", tok, labels=["a", "b"]
    )  # backbone from the MLM checkpoint
    mlm = BertForMaskedLM.from_pretrained(str(mlm_dir)).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for text in TEXT:
            ids = tok(text)["input_ids"]
            for i in range(1, len(ids) - 1):  # every token but [CLS] and [SEP]
                masked = list(ids)
                masked[i] = tok.mask_token_id
                logp = mlm(torch.tensor([masked])).logits[0, i].log_softmax(-1)
                nll, n = nll - float(logp[ids[i]]), n + 1
    probe = build_probe(cfg, tok, clf)
    got = probe.score(clf)
    assert probe.measure == "pseudo_perplexity"
    assert got["tokens"] == n
    assert got["value"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    # The classifier's encoder is what gets measured: moving it moves the measure.
    with torch.no_grad():
        emb = clf.bert.embeddings.word_embeddings.weight
        emb.add_(torch.randn_like(emb))  # tied: the MLM decoder reads the classifier's embeddings
    assert abs(probe.score(clf)["value"] / got["value"] - 1) > 0.01
    assert all(p.requires_grad for p in clf.parameters())  # measuring froze nothing of the model
    losses = list(probe.sample_losses(clf, 4))
    assert len(losses) == 4 and all(v.requires_grad for v in losses)


def test_no_mlm_head_means_no_pseudo_perplexity(tmp_path: Path) -> None:
    bert_dir = tiny_bert_dir(tmp_path)  # a classifier checkpoint: no MLM head weights
    assert load_mlm(str(bert_dir)) is None
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(TEXT))
    cfg = _cfg(tmp_path, bert_dir, reference=str(ref))
    tok = load_tokenizer(cfg.model)
    clf = load_model(cfg.model, "classification", tok, labels=["a", "b"])
    with pytest.raises(UserError, match="no masked-LM head.*forgetting.prior"):
        build_probe(cfg, tok, clf)


def test_prior_resolution(tmp_path: Path) -> None:
    # auto with a start model that is no lmtune classifier: nothing to measure, no error.
    assert resolve_prior(_cfg(tmp_path, tiny_bert_dir(tmp_path), prior="auto")) is None
    with pytest.raises(UserError, match="forgetting.prior.*nope"):
        resolve_prior(_cfg(tmp_path, tiny_bert_dir(tmp_path), prior=str(tmp_path / "nope")))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                "task=classification",
                "forgetting.mitigation.replay.data=x.txt",
                "forgetting.mitigation.replay.fraction=0.2",
            ],
            "replay applies to task sft only",
        ),
        (["task=sft", "forgetting.mitigation.replay.fraction=0.2"], "needs both data"),
        (
            ["forgetting.mitigation.ewc.weight=1"],
            "ewc needs forgetting.reference or forgetting.prior",
        ),
        (["adapter.type=head", "forgetting.mitigation.l2sp=1"], "exclude the task head"),
        (["task=sft", "forgetting.prior=runs/a"], "task sft cannot use it"),
        (["task=sft", "forgetting.measure=pseudo_perplexity"], "is for encoders"),
    ],
)
def test_impossible_forgetting_configs(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


# ---------------------------------------------------------------- overfitting


def _events(train: list[float], evals: list[float], every: int = 10) -> list[dict]:
    out = [{"event": "train", "step": (i + 1) * every, "loss": v} for i, v in enumerate(train)]
    return out + [
        {"event": "eval", "step": (i + 1) * every, "eval_loss": v} for i, v in enumerate(evals)
    ]


def test_overfitting_flags_on_synthetic_curves() -> None:
    healthy = overfitting_flags(_events([1.0, 0.8, 0.6, 0.5, 0.45], [1.05, 0.85, 0.7, 0.62, 0.6]))
    assert healthy["flags"] == [] and healthy["best_step"] == 50
    assert healthy["gap_at_end"] == pytest.approx(0.15)

    over = overfitting_flags(
        _events([1.0, 0.7, 0.5, 0.3, 0.2, 0.1], [1.0, 0.8, 0.85, 0.9, 1.0, 1.2])
    )
    assert over["best_step"] == 20
    assert over["gap_at_best"] == pytest.approx(0.1) and over["gap_at_end"] == pytest.approx(1.1)
    assert over["longest_rise"] == {"evaluations": 4, "from_step": 20, "to_step": 60}
    assert [f.split(":")[0] for f in over["flags"]] == ["large_gap", "eval_loss_rising"]

    # Eval loss rising while the train loss rises too is not overfitting (a bad LR, say).
    diverging = overfitting_flags(_events([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8]))
    assert diverging["longest_rise"]["evaluations"] == 0
    assert diverging["flags"] == []


def test_overfitting_uses_the_last_train_log_and_survives_resume_duplicates() -> None:
    events = [
        {"event": "train", "step": 5, "loss": 2.0},
        {"event": "train", "step": 10, "loss": 1.0},
        {"event": "eval", "step": 12, "eval_loss": 1.5},
        {"event": "train", "step": 10, "loss": 0.9},  # logged again after a resume
        {"event": "eval", "step": 12, "eval_loss": 1.4},
    ]
    out = overfitting_flags(events)
    assert out["evaluations"] == 1
    assert out["gap_at_end"] == pytest.approx(0.5)
    assert overfitting_flags([]) == {"flags": [], "evaluations": 0}


def test_a_lora_run_folder_cannot_be_a_start_model_without_merging(tmp_path: Path) -> None:
    from lmtune.models.export import save_model

    tok = make_bert_tokenizer()
    mcfg = ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path)))
    lora = apply_adapter(
        load_model(mcfg, "classification", tok, labels=["a", "b"]),
        Config(adapter={"r": 2}).adapter,
        "classification",
    )
    save_model(lora, tok, tmp_path / "run" / "model", extra={"task": "classification"})
    with pytest.raises(UserError, match="LoRA/DoRA adapter, not a full model.*lmtune export"):
        load_model(
            ModelConfig(name_or_path=str(tmp_path / "run" / "model")),
            "classification",
            tok,
            labels=["x", "y"],
        )


def test_swapped_heads_reads_a_lora_model_through_the_prior_head(tmp_path: Path) -> None:
    from lmtune.evaluate.forgetting import swapped_heads

    tok = make_bert_tokenizer()
    mcfg = ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path)))
    model = apply_adapter(
        load_model(mcfg, "classification", tok, labels=["a", "b", "c"]),
        Config(adapter={"r": 2, "dropout": 0.0}).adapter,
        "classification",
    ).eval()
    prior = torch.nn.Linear(32, 2)
    enc = tok(["the movie was great", "our trip was sad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        own = model(**enc).logits
        with swapped_heads(model, {"classifier": prior}):
            swapped = model(**enc).logits
            pooled = model.get_base_model().bert(**enc).pooler_output
        again = model(**enc).logits
    assert swapped.shape == (2, 2) and torch.allclose(swapped, prior(pooled))
    assert own.shape == (2, 3) and torch.equal(own, again)  # the LoRA model's own head is back
