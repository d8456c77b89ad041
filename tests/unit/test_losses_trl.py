"""Our preference losses agree with TRL 1.16 (a test-only oracle) on identical inputs.

DPO: whole-batch losses from DPOTrainer._compute_loss (TRL's forward pass, its collator's
batch) on a tiny Llama policy and a differently-seeded reference, against our
response_logps + DPO_LOSSES on the same token ids. ORPO: TRL's odds_ratio_loss and its full
loss (concatenated_forward), SimPO: TRL's CPO cpo_loss.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmtune.losses.dpo import DPO_LOSSES, LossParams, PairLogps
from lmtune.losses.orpo import odds_ratio_term, orpo_loss
from lmtune.tasks.pairs import collate_pairs, response_logps
from tiny import make_causal, make_tokenizer

trl = pytest.importorskip("trl")
TOL = 1e-5


def _model(tok, seed: int) -> torch.nn.Module:
    model = make_causal("llama", tok, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than the default init: sharp, varied log-probs
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def _pairs(vocab: int, n: int = 6, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(5, vocab) for _ in range(rng.randint(lo, hi))]

    return [
        {"prompt_ids": ids(2, 7), "chosen_ids": ids(1, 6), "rejected_ids": ids(1, 6)}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = copy.deepcopy(make_tokenizer(pad=True))
    policy, ref = _model(tok, 0), _model(tok, 1)
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_length=None,
        disable_dropout=True,
        beta=0.1,
    )
    data = Dataset.from_dict({"prompt": ["hello"], "chosen": [" yes"], "rejected": [" no"]})
    trainer = DPOTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    trainer.model.eval()
    pairs = _pairs(len(tok))
    collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id)
    return SimpleNamespace(
        tok=tok, policy=policy, ref=ref, trainer=trainer, pairs=pairs, collator=collator
    )


def _trl_dpo(setup, pairs, loss_type: str, beta: float, eps: float) -> float:
    t = setup.trainer
    t.loss_types, t.loss_weights, t.beta, t.label_smoothing = [loss_type], [1.0], beta, eps
    with torch.no_grad():
        return float(t._compute_loss(t.model, setup.collator(pairs), return_outputs=False))


@torch.no_grad()
def _ours(setup, pairs, loss: str, beta: float, eps: float) -> torch.Tensor:
    batch = collate_pairs(pairs, setup.tok.pad_token_id)
    n = len(pairs)
    sums, counts = response_logps(setup.policy, batch)
    ref, _ = response_logps(setup.ref, batch)
    s = PairLogps(sums[:n], sums[n:], ref[:n], ref[n:], counts[:n], counts[n:])
    return DPO_LOSSES[loss](s, LossParams(beta=beta, label_smoothing=eps))


@pytest.mark.parametrize(
    ("loss", "beta", "eps"),
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.5, 0.0),
        ("ipo", 0.5, 0.0),
        ("ipo", 0.1, 0.0),
        ("hinge", 0.1, 0.0),
        ("hinge", 2.0, 0.0),
        ("robust", 0.1, 0.1),
        ("robust", 0.5, 0.3),
    ],
)
def test_dpo_losses_match_trl(setup, loss: str, beta: float, eps: float) -> None:
    ours = float(_ours(setup, setup.pairs, loss, beta, eps).mean())
    theirs = _trl_dpo(setup, setup.pairs, loss, beta, eps)
    print(
        f"dpo {loss} beta={beta} eps={eps}: ours={ours:.8f} trl={theirs:.8f} "
        f"diff={abs(ours - theirs):.2e}"
    )
    assert abs(ours - theirs) < TOL


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_label_smoothed_dpo_matches_trl(setup, eps: float) -> None:
    """Conservative DPO. TRL 1.16's `sigmoid` ignores label_smoothing; its `aot` loss is the
    smoothed logistic loss on sorted log-ratios, which for a batch of ONE pair is exactly
    -(1-e) log s(b*d) - e log s(-b*d). So compare pair by pair."""
    ours = _ours(setup, setup.pairs, "sigmoid", 0.3, eps)
    theirs = torch.tensor([_trl_dpo(setup, [p], "aot", 0.3, eps) for p in setup.pairs])
    print(f"dpo sigmoid label_smoothing={eps}: max diff {float((ours - theirs).abs().max()):.2e}")
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_orpo_odds_ratio_matches_trl() -> None:
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(0)
    chosen, rejected = -torch.rand(64, generator=g) * 4, -torch.rand(64, generator=g) * 4
    chosen[:4] = torch.tensor([-1e-3, -0.5, -0.7, -8.0])  # both branches of log1mexp
    fake = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs = ORPOTrainer.odds_ratio_loss(fake, chosen, rejected)[0]
    ours = 0.25 * odds_ratio_term(chosen, rejected)
    print(f"orpo odds ratio: max diff {float((ours - theirs).abs().max()):.2e}")
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


@torch.no_grad()
def test_orpo_full_loss_matches_trl(setup) -> None:
    """Whole ORPO loss on one batch through TRL's concatenated_forward. TRL's NLL term counts
    prompt tokens and averages over all chosen tokens of the batch; ours is the response-only
    per-pair average. They coincide when the prompt is one token (BOS) and chosen responses
    have equal lengths, which this batch has."""
    from trl.experimental.orpo import ORPOTrainer

    rng = random.Random(3)
    bos, lam, pad = setup.tok.bos_token_id, 0.2, setup.tok.pad_token_id
    pairs = [
        {
            "prompt_ids": [bos],
            "chosen_ids": [rng.randrange(5, 500) for _ in range(5)],
            "rejected_ids": [rng.randrange(5, 500) for _ in range(rng.randint(2, 8))],
        }
        for _ in range(5)
    ]
    batch = collate_pairs(pairs, pad)
    n = len(pairs)
    sums, counts = response_logps(setup.policy, batch)
    avg = sums / counts
    ours = float(orpo_loss(avg[:n], avg[n:], lam).mean())

    def side(key: str) -> dict[str, torch.Tensor]:
        seqs = [[bos] + p[key] for p in pairs]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, 0] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    trl_batch = {f"{k}_{f}": v for k in ("chosen", "rejected") for f, v in side(f"{k}_ids").items()}
    fake = SimpleNamespace(
        concatenated_inputs=ORPOTrainer.concatenated_inputs,
        beta=lam,
        is_encoder_decoder=False,
        padding_value=pad,
        aux_loss_enabled=False,
        get_batch_logps=ORPOTrainer.get_batch_logps,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    c, r, _, _, nll = ORPOTrainer.concatenated_forward(fake, setup.policy, trl_batch)
    theirs = float(nll - ORPOTrainer.odds_ratio_loss(fake, c, r)[0].mean())  # TRL's own formula
    print(f"orpo full loss: ours={ours:.8f} trl={theirs:.8f} diff={abs(ours - theirs):.2e}")
    assert abs(ours - theirs) < TOL


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_simpo_matches_trl_cpo(eps: float) -> None:
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(1)
    sums_c, sums_r = -torch.rand(32, generator=g) * 40, -torch.rand(32, generator=g) * 40
    n_c = torch.randint(1, 20, (32,), generator=g).float()
    n_r = torch.randint(1, 20, (32,), generator=g).float()
    fake = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=0.7,
        label_smoothing=eps,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    theirs = CPOTrainer.cpo_loss(fake, sums_c / n_c, sums_r / n_r)[0]
    zero = torch.zeros(32)
    s = PairLogps(sums_c, sums_r, zero, zero, n_c, n_r)
    ours = DPO_LOSSES["simpo"](s, LossParams(beta=2.0, label_smoothing=eps, simpo_gamma=0.7))
    print(f"simpo eps={eps}: max diff {float((ours - theirs).abs().max()):.2e}")
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_trl_is_not_a_runtime_dependency() -> None:
    import sys

    import lmtune.tasks.dpo  # noqa: F401
    import lmtune.tasks.orpo  # noqa: F401
    import lmtune.tasks.reward  # noqa: F401

    src = Path(__file__).resolve().parents[2] / "src"
    assert not any(
        "import trl" in p.read_text() or "from trl" in p.read_text() for p in src.rglob("*.py")
    )
    assert "lmtune" in sys.modules
