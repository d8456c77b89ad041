"""Preference losses against values worked out by hand (math module, no torch formulas)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lmtune.losses.dpo import DPO_LOSSES, REFERENCE_FREE, LossParams, PairLogps, implicit_rewards
from lmtune.losses.logprobs import sequence_logps
from lmtune.losses.orpo import log1mexp, log_odds_ratio, orpo_loss
from lmtune.losses.reward import bradley_terry
from lmtune.tasks.pairs import collate_pairs, response_logps
from tiny import make_causal, make_tokenizer


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# One pair: policy chosen -10, rejected -14, reference -11 / -12; 4 and 8 response tokens.
S = PairLogps(
    torch.tensor([-10.0]),
    torch.tensor([-14.0]),
    torch.tensor([-11.0]),
    torch.tensor([-12.0]),
    torch.tensor([4.0]),
    torch.tensor([8.0]),
)
D = (-10 + 11) - (-14 + 12)  # 3.0


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("sigmoid", LossParams(beta=0.1), -math.log(_sig(0.3))),
        (
            "sigmoid",
            LossParams(beta=0.1, label_smoothing=0.2),
            -0.8 * math.log(_sig(0.3)) - 0.2 * math.log(_sig(-0.3)),
        ),
        (
            "robust",
            LossParams(beta=0.1, label_smoothing=0.2),
            (-0.8 * math.log(_sig(0.3)) + 0.2 * math.log(_sig(-0.3))) / 0.6,
        ),
        ("ipo", LossParams(beta=0.5), ((1 / 4) - (-2 / 8) - 1.0) ** 2),
        ("hinge", LossParams(beta=0.1), 1 - 0.3),
        ("hinge", LossParams(beta=1.0), 0.0),
        (
            "simpo",
            LossParams(beta=2.0, simpo_gamma=0.5),
            -math.log(_sig(2.0 * (-10 / 4 - -14 / 8) - 0.5)),
        ),
    ],
)
def test_dpo_family_hand_values(name: str, params: LossParams, expected: float) -> None:
    assert float(DPO_LOSSES[name](S, params)[0]) == pytest.approx(expected, abs=1e-6)


def test_dpo_delta_and_rewards() -> None:
    assert float(S.delta()[0]) == D
    c, r = implicit_rewards(S, LossParams(beta=0.1), "sigmoid")
    assert (float(c[0]), float(r[0])) == pytest.approx((0.1, -0.2))
    c, r = implicit_rewards(S, LossParams(beta=2.0), "simpo")  # no reference: beta * avg logp
    assert (float(c[0]), float(r[0])) == pytest.approx((-5.0, -3.5))
    assert REFERENCE_FREE == {"simpo"}


def test_losses_are_picked_from_a_dict_and_differentiable() -> None:
    pol = torch.tensor([-10.0, -3.0], requires_grad=True)
    s = PairLogps(
        pol,
        torch.tensor([-14.0, -2.0]),
        torch.zeros(2),
        torch.zeros(2),
        torch.tensor([4.0, 2.0]),
        torch.tensor([8.0, 3.0]),
    )
    for fn in DPO_LOSSES.values():
        out = fn(s, LossParams(beta=0.5))
        assert out.shape == (2,)
        out.sum().backward()
        assert pol.grad is not None and torch.isfinite(pol.grad).all()
        pol.grad = None


def test_bradley_terry_hand_values() -> None:
    loss = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.tolist() == pytest.approx([-math.log(_sig(1.0)), -math.log(_sig(-1.0))])
    with_margin = bradley_terry(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.5]))
    assert float(with_margin[0]) == pytest.approx(-math.log(_sig(0.5)))


def test_bradley_terry_ties_target_equal_rewards() -> None:
    chosen, rejected = torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 0.0])
    tie = torch.tensor([False, True, True])
    loss = bradley_terry(chosen, rejected, torch.tensor([0.5, 0.5, 0.5]), tie)
    # Ties: -(log s(d) + log s(-d)) / 2 with no margin; ln 2 at d = 0, larger the further apart.
    tie_3 = -(math.log(_sig(3.0)) + math.log(_sig(-3.0))) / 2
    assert loss.tolist() == pytest.approx([-math.log(_sig(0.5)), math.log(2.0), tie_3])


def test_orpo_hand_values() -> None:
    c, r = -0.4, -1.2  # per-token average log-probs
    odds = math.log(math.exp(c) / (1 - math.exp(c))) - math.log(math.exp(r) / (1 - math.exp(r)))
    tc, tr = torch.tensor([c]), torch.tensor([r])
    assert float(log_odds_ratio(tc, tr)[0]) == pytest.approx(odds, abs=1e-6)
    assert float(orpo_loss(tc, tr, 0.1)[0]) == pytest.approx(
        0.4 - 0.1 * math.log(_sig(odds)), abs=1e-6
    )
    x = torch.tensor([-1e-8, -1e-3, -0.69, -0.7, -5.0, -50.0])
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x.double()).tolist() == pytest.approx(expected, rel=1e-9)
    assert torch.isfinite(log_odds_ratio(torch.tensor([0.0]), torch.tensor([-1.0]))).all()


def test_sequence_logps_sums_per_sequence() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    logps, counts = sequence_logps(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), 3)
    assert logps.tolist() == pytest.approx([math.log(0.5) + math.log(0.75), math.log(0.5), 0.0])
    assert counts.tolist() == [2.0, 1.0, 0.0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_response_logps_match_a_hand_computation(arch: str) -> None:
    """Sum of log p(token) over response tokens only, from the full logits, by hand."""
    tok = copy.deepcopy(make_tokenizer(pad=True))
    model = make_causal(arch, tok, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # sharper, varied distributions
    pairs = [
        {"prompt_ids": [1, 50, 60], "chosen_ids": [70, 80, 2], "rejected_ids": [90, 2]},
        {"prompt_ids": [1, 55], "chosen_ids": [71, 2], "rejected_ids": [91, 92, 93, 2]},
    ]
    batch = collate_pairs(pairs, tok.pad_token_id)
    import lmtune.models.lm_head as lm_head

    seen: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    chunked = lm_head.linear_token_logps

    def spy(hidden, *args, **kwargs):
        seen.append(("chunked", *hidden.shape))
        return chunked(hidden, *args, **kwargs)

    lm_head.linear_token_logps = spy
    try:
        with torch.no_grad():
            sums, counts = response_logps(model, batch)
    finally:
        hook.remove()
        lm_head.linear_token_logps = chunked
    # Only the 11 positions that predict a response token reached the vocabulary projection,
    # in chunks (the head module's own forward, which would make [N, vocab], never ran).
    assert seen == [("chunked", 11, model.config.hidden_size)]
    with torch.no_grad():
        expected = []
        for p in pairs:
            for key in ("chosen_ids", "rejected_ids"):
                seq = p["prompt_ids"] + p[key]
                full = model(torch.tensor([seq])).logits[0].double().log_softmax(-1)
                start = len(p["prompt_ids"])
                expected.append(
                    (key, sum(float(full[t - 1, seq[t]]) for t in range(start, len(seq))))
                )
    want = [v for k, v in expected if k == "chosen_ids"] + [
        v for k, v in expected if k == "rejected_ids"
    ]
    assert sums.tolist() == pytest.approx(want, abs=1e-4)
    assert counts.tolist() == [3.0, 2.0, 2.0, 4.0]
    assert min(want) < -5  # the check is not trivially near zero


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_linear_logps_equal_the_dense_computation(with_bias: bool) -> None:
    from lmtune.losses.logprobs import linear_token_logps

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(101, 16, generator=g) * 0.5).requires_grad_()
    b = torch.randn(101, generator=g).requires_grad_() if with_bias else None
    tgt = torch.randint(0, 101, (37,), generator=g)
    upstream = torch.randn(37, generator=g)
    logp, pred = linear_token_logps(h, w, b, tgt, chunk=8)  # 5 chunks, the last one short
    (logp * upstream).sum().backward()
    got = [h.grad.clone(), w.grad.clone()] + ([b.grad.clone()] if with_bias else [])
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    dense = torch.nn.functional.linear(h, w, b).log_softmax(-1)
    ref = dense.gather(1, tgt[:, None])[:, 0]
    (ref * upstream).sum().backward()
    want = [h.grad, w.grad] + ([b.grad] if with_bias else [])
    assert torch.allclose(logp, ref, atol=1e-6)
    assert torch.equal(pred, dense.argmax(-1))
    for a, e in zip(got, want, strict=True):
        assert torch.allclose(a, e, atol=1e-6), (a - e).abs().max()


def test_chunked_linear_logps_keep_no_full_logits() -> None:
    """What backward keeps is the inputs, not [N, vocab]: saved tensors are hidden, weight, targets."""
    from lmtune.losses.logprobs import linear_token_logps

    h = torch.randn(64, 8, requires_grad=True)
    w = torch.randn(5000, 8, requires_grad=True)
    logp, _ = linear_token_logps(h, w, None, torch.zeros(64, dtype=torch.long), chunk=16)
    saved = [t for t in logp.grad_fn.saved_tensors if t is not None]
    assert max(t.numel() for t in saved) == w.numel()  # the weight; never 64 x 5000 logits
