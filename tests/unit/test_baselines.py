"""Baseline math: pooling, centroids, label similarity and label log-likelihood scoring."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, BertModel

from lmtune.config import BaselinesConfig, Config
from lmtune.errors import UserError
from lmtune.evaluate import baselines as bl
from tiny import make_bert_tokenizer, make_causal, make_tokenizer


class EchoLM(torch.nn.Module):
    """A fake causal LM with a known answer: logit 5 for every token already in the sequence
    (padding excluded), 0 for the rest. It 'predicts' words it has seen, so the label word
    that occurs in the prompt is the more likely continuation."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.widths: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0):  # noqa: ANN001, ANN201
        self.widths.append(input_ids.shape[1])
        seen = (
            (F.one_hot(input_ids, self.vocab).float() * attention_mask[..., None])
            .cumsum(1)
            .clamp(max=1)
        )
        logits = 5.0 * seen
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def echo_logprob(prefix: list[int], token: int, vocab: int) -> float:
    """log p(token | prefix) under EchoLM, by hand."""
    n = len(set(prefix))
    z = n * math.exp(5) + (vocab - n)
    return (5.0 if token in prefix else 0.0) - math.log(z)


def test_mean_pool_ignores_padding_and_normalize_gives_unit_rows() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = bl.mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(pooled, torch.tensor([[2.0, 3.0]]))
    unit = bl.l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.allclose(unit, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_prototypes_average_then_renormalise_and_nearest_centroid() -> None:
    # Class 0 members point along x and y; their unit mean is the diagonal. Class 1 is -x.
    emb = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    protos = bl.class_prototypes(emb, [0, 0, 1], 3)
    s = 1 / math.sqrt(2)
    assert torch.allclose(protos[0], torch.tensor([s, s]))
    assert torch.allclose(protos[1], torch.tensor([-1.0, 0.0]))
    assert protos[2].isnan().all()  # no rows: no prototype
    queries = torch.tensor([[1.0, 0.1], [-3.0, 0.5], [0.1, -1.0], [-1.0, -1.0]])
    # [0.1, -1] has cosine -0.63 to [s, s] and -0.10 to [-1, 0]: class 1. A missing class read
    # as a zero vector (cosine 0) would win there; it must never win.
    assert bl.nearest_prototype(queries, protos).tolist() == [0, 1, 1, 1]


def test_zero_shot_similarity_to_several_descriptions() -> None:
    # Two descriptions for "pos" average into one prototype; the text closest to that mean
    # wins even though it is closer to neg's single description than to either pos one alone.
    desc = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    protos = bl.class_prototypes(desc, [1, 1, 0], 2)
    text = torch.tensor([[0.6, 0.6, 0.7]])
    assert (
        bl.l2_normalize(text) @ bl.l2_normalize(desc).T
    ).argmax().item() == 2  # nearest single: neg
    assert bl.nearest_prototype(text, protos).tolist() == [1]


def test_label_scores_sum_and_mean_disagree_on_length() -> None:
    # Label A: one token at log p -1.0. Label B: three tokens at -0.5 each (sum -1.5).
    sums, counts = torch.tensor([-1.0, -1.5]), torch.tensor([1.0, 3.0])
    assert bl.label_scores(sums, counts, "sum").argmax().item() == 0
    assert bl.label_scores(sums, counts, "mean").argmax().item() == 1
    assert torch.allclose(bl.label_scores(sums, counts, "mean"), torch.tensor([-1.0, -0.5]))


def test_sample_shots_is_seeded_per_class_and_reports_short_labels() -> None:
    rows = [{"text": f"p{i}", "label": "pos"} for i in range(10)] + [{"text": "n0", "label": "neg"}]
    a, short = bl.sample_shots(rows, ["neg", "pos"], 3, seed=7)
    b, _ = bl.sample_shots(rows, ["neg", "pos"], 3, seed=7)
    c, _ = bl.sample_shots(rows, ["neg", "pos"], 3, seed=8)
    assert a == b and a != c
    assert sorted(r["label"] for r in a) == ["neg", "pos", "pos", "pos"]
    assert short == {"neg": 1}


def test_metric_row_mean_and_sample_std_over_seeds() -> None:
    gold = [0, 0, 1, 1]
    row = bl.metric_row("few-shot", 4, gold, [[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], ["a", "b"])
    assert row["accuracy_per_seed"] == [1.0, 0.75, 0.5]
    assert row["accuracy"] == pytest.approx(0.75) and row["accuracy_std"] == pytest.approx(0.25)
    assert row["seeds"] == 3 and row["k"] == 4
    zero = bl.metric_row("zero-shot", 0, gold, [[0, 1, 1, 1]], ["a", "b"])
    assert "accuracy_std" not in zero and zero["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


@torch.no_grad()
def test_embed_is_mean_pooled_normalised_and_padding_invariant() -> None:
    tok = make_bert_tokenizer()
    torch.manual_seed(0)
    from transformers import BertConfig

    model = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    rows = [{"text": "the movie"}, {"text": "the quick brown fox jumps over the lazy dog"}]
    together = bl.embed(model, tok, rows, 64, batch_size=2)
    alone = bl.embed(model, tok, rows[:1], 64, batch_size=1)
    enc = tok("the movie", return_tensors="pt")
    by_hand = model(**enc).last_hidden_state[0].mean(0)
    assert torch.allclose(together[0], alone[0], atol=1e-5)  # padding in the batch changes nothing
    assert torch.allclose(alone[0], by_hand / by_hand.norm(), atol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_label_descriptions_default_and_errors() -> None:
    labels = ["0", "1"]
    assert bl.label_descriptions(BaselinesConfig(), labels) == {
        "0": ["This text is 0."],
        "1": ["This text is 1."],
    }
    cfg = BaselinesConfig(
        label_descriptions={0: "a negative review", 1: ["a positive review", "a happy one"]}
    )
    assert bl.label_descriptions(cfg, labels)["1"] == ["a positive review", "a happy one"]
    with pytest.raises(
        UserError,
        match=r"label_descriptions.*label\(s\) pos are not labels.*no entry for label\(s\) 1",
    ):
        bl.label_descriptions(BaselinesConfig(label_descriptions={"0": "x", "pos": "y"}), labels)


def test_config_section_validates() -> None:
    with pytest.raises(ValueError, match="baselines.enabled only applies to task classification"):
        Config.model_validate({"task": "sft", "baselines": {"enabled": True}})
    with pytest.raises(ValueError, match=r"must contain \{text\}"):
        BaselinesConfig(prompt="Review:")
    assert BaselinesConfig(label_words={1: "positive"}).label_words == {"1": "positive"}


def test_base_kind() -> None:
    tok = make_tokenizer()
    assert bl.base_kind(AutoConfig.for_model("bert")) == "encoder"
    for arch in ("llama", "gpt2", "qwen2"):
        assert bl.base_kind(make_causal(arch, tok).config) == "causal"


def test_continuation_logprobs_match_hand_values_under_left_padding() -> None:
    vocab = 20
    pairs = [([1, 2, 3, 4, 5], [3, 9]), ([7], [8]), ([2, 2], [2, 6, 6])]
    sums, counts = bl.continuation_logprobs(EchoLM(vocab), pairs, batch_size=3, pad_id=0)
    for (ctx, cont), s, c in zip(pairs, sums, counts, strict=True):
        want = sum(echo_logprob(ctx + cont[:j], t, vocab) for j, t in enumerate(cont))
        assert s.item() == pytest.approx(want, abs=1e-5)
        assert c.item() == len(cont)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@torch.no_grad()
def test_continuation_logprobs_batched_equal_one_by_one(arch: str) -> None:
    # Left padding + explicit position_ids + logits_to_keep must give exactly what a plain
    # unpadded forward of each sequence gives (GPT-2 has absolute positions: shifts show).
    tok = make_tokenizer()
    model = make_causal(arch, tok)
    pairs = [([5, 6, 7, 8, 9, 10, 11], [12, 13]), ([20, 21], [22]), ([30, 31, 32], [33, 34, 35])]
    sums, _ = bl.continuation_logprobs(model, pairs, batch_size=3, pad_id=0)
    for (ctx, cont), s in zip(pairs, sums, strict=True):
        logp = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        want = sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))
        assert s.item() == pytest.approx(want, abs=1e-4)


def test_candidates_tail_of_joint_tokenization() -> None:
    tok = make_tokenizer()
    ctx, conts = bl.candidates(tok, "Text: the movie was great\nLabel:", ["great", "awful"])
    assert ctx == tok("Text: the movie was great\nLabel:", add_special_tokens=False)["input_ids"]
    assert conts == [tok(" great")["input_ids"], tok(" awful")["input_ids"]]
    assert (
        bl.render("R: {text} / {text_pair}", {"text": "a {x}", "text_pair": "b"}) == "R: a {x} / b"
    )
    assert bl.render("R: {text}", {"text": "a", "text_pair": "b"}) == "R: a\nb"


def _rows(words: list[str], labels: list[str]) -> list[dict[str, str]]:
    return [
        {"text": f"the movie was {w} {i}", "label": lab}
        for i, (w, lab) in enumerate(zip(words, labels, strict=True))
    ]


def test_causal_zero_and_few_shot_with_a_known_model() -> None:
    tok = make_tokenizer(pad=True)
    lm = EchoLM(len(tok))
    cfg = BaselinesConfig(label_words={"neg": "awful", "pos": "great"}, batch_size=4)
    words = ["awful", "great"]
    rows = _rows(["great", "awful", "great", "awful"], ["pos", "neg", "pos", "neg"])
    # Zero-shot: the label word that is in the text is the likelier continuation.
    pred, stats = bl.causal_predictions(lm, tok, cfg, words, rows, [], [], 256, "cpu")
    assert pred == [1, 0, 1, 0] and stats["rows_cut"] == 0
    # Texts without either word; demonstrations of "pos" only put "great" in the context,
    # so every row becomes pos: the demonstrations really are in the prompt.
    plain = _rows(["fine", "fine"], ["pos", "neg"])
    demos = [{"text": "the show was lovely", "label": "pos"}]
    pred, stats = bl.causal_predictions(lm, tok, cfg, words, plain, demos, ["great"], 256, "cpu")
    assert pred == [1, 1] and stats["demos_used"] == 2


def test_causal_demonstrations_dropped_and_long_rows_cut_to_max_length() -> None:
    tok = make_tokenizer(pad=True)
    lm = EchoLM(len(tok))
    cfg = BaselinesConfig(batch_size=8)
    rows = [{"text": "the movie was great", "label": lab} for lab in ("pos", "neg")]
    demos = [{"text": "the show was lovely", "label": lab} for lab in ("pos", "neg", "pos", "neg")]
    n = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    query, demo = n(bl.render(cfg.prompt, rows[0])), n(bl.render(cfg.prompt, demos[0]) + " pos\n\n")
    assert demo == n(
        bl.render(cfg.prompt, demos[1]) + " neg\n\n"
    )  # all demonstrations equally long
    longest = max(n(" pos"), n(" neg"))
    max_length = query + longest + 1 + 2 * demo + 1  # room for two demonstrations, not three
    _, stats = bl.causal_predictions(
        lm, tok, cfg, ["neg", "pos"], rows, demos, ["pos", "neg", "pos", "neg"], max_length, "cpu"
    )
    assert stats["rows_with_dropped_demos"] == 2 and stats["demos_used"] == 4
    assert max(lm.widths) == query + 2 * demo + longest <= max_length
    lm.widths.clear()
    _, stats = bl.causal_predictions(lm, tok, cfg, ["neg", "pos"], rows, [], [], 10, "cpu")
    assert stats["rows_cut"] == 2 and max(lm.widths) == 10


class EchoLMAllPositions(torch.nn.Module):
    """EchoLM for a model whose forward has no logits_to_keep (returns every position)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.inner = EchoLM(vocab)

    def forward(self, input_ids, attention_mask, position_ids=None):  # noqa: ANN001, ANN201
        return self.inner(input_ids, attention_mask, position_ids)


def test_continuation_logprobs_without_logits_to_keep() -> None:
    pairs = [([1, 2, 3, 4, 5], [3, 9]), ([7], [8, 8])]
    want = bl.continuation_logprobs(EchoLM(20), pairs, batch_size=2, pad_id=0)
    got = bl.continuation_logprobs(EchoLMAllPositions(20), pairs, batch_size=2, pad_id=0)
    assert torch.allclose(want[0], got[0]) and torch.equal(want[1], got[1])
