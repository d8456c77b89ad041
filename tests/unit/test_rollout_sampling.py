"""Seeded rollouts (tasks/rollout.py): each completion draws from its own seeded stream, so
it is the same whichever rows share its batch (or process), and the draws follow
softmax(logits / temperature) within the top-p nucleus."""

from __future__ import annotations

import torch

from lmtune.tasks.rollout import RowSeededSampler, sample
from tiny import make_causal, make_tokenizer


def test_draws_follow_the_tempered_softmax_within_the_nucleus() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    n, temperature = 4000, 0.7
    picks = torch.cat(
        [
            RowSeededSampler([seed], temperature)(torch.zeros(1, 1), logits).argmax(-1)
            for seed in range(n)
        ]
    )
    freq = torch.bincount(picks, minlength=5).double() / n
    want = torch.softmax(logits[0].double() / temperature, -1)
    assert torch.allclose(freq, want, atol=0.03), (freq, want)
    # top_p 0.8 keeps the smallest set of tokens holding 80% of the mass: here tokens 0 and 1.
    nucleus = [
        int(RowSeededSampler([s], 1.0, top_p=0.8)(torch.zeros(1, 1), logits).argmax(-1))
        for s in range(400)
    ]
    assert set(nucleus) == {0, 1}


def test_a_completion_depends_on_its_seed_not_on_its_batch() -> None:
    tok = make_tokenizer(pad=False)
    model = make_causal("llama", tok)
    a, b = tok("the quick brown fox")["input_ids"], tok("hello")["input_ids"]

    def texts(prompts: list[list[int]], seeds: list[int]) -> list[str]:
        torch.manual_seed(123)  # the global stream must not matter: only the seeds
        return sample(model, tok, prompts, ["p"] * len(prompts), 2, 6, 1.0, seeds=seeds).texts

    together = texts([a, b], [1, 2, 3, 4])
    alone = texts([b], [3, 4])
    assert together[2:] == alone
    assert texts([a], [1, 2]) == together[:2]
    # Other seeds, other completions (a random tiny model samples near-uniformly).
    assert texts([a, b], [5, 6, 7, 8]) != together
