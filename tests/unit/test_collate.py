"""Batching: padding, length grouping, and packing that is exactly equal to no packing."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lmtune.data.collate import (
    LengthGroupedSampler,
    block_causal_mask,
    check_labels,
    collate_packed,
    pack_features,
    pad_batch,
)
from tiny import make_causal, make_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "A language model predicts the next token from the tokens before it.",
    "Count 1 2 3 4 5",
    "She sells sea shells",
    "Fine-tuning adapts a pre-trained model to a new task with a small dataset.",
    "Why?",
]


def features(tok) -> list[dict]:
    out = []
    for text in TEXTS:
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": ids, "labels": list(ids), "length": len(ids)})
    return out


def test_pad_batch_pads_right_and_builds_mask():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = pad_batch(feats, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    cls = pad_batch([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}], pad_id=9)
    assert cls["labels"].tolist() == [1, 0] and cls["input_ids"].tolist() == [[1, 2], [3, 9]]


def test_check_labels_rejects_fully_masked_batch():
    check_labels({"labels": torch.tensor([[-100, 4], [-100, -100]])})
    with pytest.raises(ValueError, match=r"every label in this batch is masked \(-100\)") as err:
        check_labels({"labels": torch.full((2, 5), -100)})
    assert "raise model.max_length or shorten prompts" in str(err.value)


def test_pack_features_first_fit_and_restarting_positions():
    feats = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (5, 9, 3, 7, 4, 2)]
    packed = pack_features(feats, max_length=10)
    # First-fit decreasing by hand: 9 -> bin0, 7 -> bin1, 5 -> bin2, 4 -> bin2, 3 -> bin1,
    # 2 fits nowhere (9+2, 10+2, 9+2 > 10) -> bin3. Four bins is optimal (9 pairs with nothing).
    assert [p["seq_lens"] for p in packed] == [[9], [7, 3], [5, 4], [2]]
    assert [p["length"] for p in packed] == [len(p["input_ids"]) for p in packed] == [9, 10, 9, 2]
    for p in packed:
        start = 0
        for n in p["seq_lens"]:
            assert p["position_ids"][start : start + n] == list(range(n))
            # The first token of each example is never a target (nothing precedes it).
            assert p["labels"][start] == -100 and p["labels"][start + 1 : start + n] == list(
                range(1, n)
            )
            start += n


def test_block_causal_mask_shape_and_padding_rows():
    mask = block_causal_mask([[2, 1]], length=4, dtype=torch.bool)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    additive = block_causal_mask([[2, 1]], length=4)
    assert additive.shape == (1, 1, 4, 4) and additive.dtype == torch.float32
    assert (
        additive[0, 0, 0, 1].item() == torch.finfo(torch.float32).min and additive[0, 0, 1, 0] == 0
    )


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked(arch: str, attn: str):
    tok = make_tokenizer(pad=True)
    model = make_causal(arch, tok)
    model.config._attn_implementation = attn
    feats = features(tok)
    packed = pack_features(feats, max_length=40)
    assert any(len(p["seq_lens"]) > 2 for p in packed)  # real packing happens
    batch = collate_packed(packed, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits
        assert torch.isfinite(logits).all()
        worst, packed_loss, alone_loss = 0.0, 0.0, 0.0
        for row, p in enumerate(packed):
            start = 0
            for n in p["seq_lens"]:
                ids = batch["input_ids"][row, start : start + n]
                alone = model(input_ids=ids[None]).logits[0]
                worst = max(worst, (alone - logits[row, start : start + n]).abs().max().item())
                alone_loss += _token_losses(alone, ids).item()
                start += n
            packed_loss += _token_losses(logits[row], batch["labels"][row]).item()
    assert worst < 1e-5
    # Same summed loss: packing neither adds cross-example targets nor drops any.
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)


def test_bool_mask_works_with_sdpa():
    tok = make_tokenizer(pad=True)
    model = make_causal("llama", tok)
    packed = pack_features(features(tok), max_length=40)
    with torch.no_grad():
        a = model(**collate_packed(packed, tok.pad_token_id)).logits
        b = model(**collate_packed(packed, tok.pad_token_id, dtype=torch.bool)).logits
    torch.testing.assert_close(a, b)


def _padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded


def test_length_grouped_sampler():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1003)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1003)) and len(sampler) == 1003
    assert order == list(LengthGroupedSampler(lengths, batch_size=8, seed=3))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != order and sorted(epoch1) == list(range(1003))
    assert list(LengthGroupedSampler(lengths, 8, seed=3, epoch=1)) == epoch1
    assert list(LengthGroupedSampler(lengths, 8, seed=4)) != order
    # A DataLoader cutting every 8 indices gets exactly the sampler's batches (short one last).
    batches = sampler.batches()
    assert [order for b in batches for order in b] == epoch1
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 1003 % 8
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first
    grouped = _padding_fraction(batches, lengths)
    shuffled = list(range(1003))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 8] for i in range(0, 1003, 8)]
    assert grouped < 0.05 < 0.3 < _padding_fraction(random_batches, lengths)
    loader = torch.utils.data.DataLoader(list(range(1003)), batch_size=8, sampler=sampler)
    assert [b.tolist() for b in loader] == batches
