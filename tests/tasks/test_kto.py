"""KTO (task kto): the loss against TRL 1.16's KTOTrainer on the same tensors, the row formats
(unpaired, chat, pairs -> two rows), and tiny-Llama training runs with LoRA (reference = the
disabled adapter) and full fine-tuning (reference precomputed and cached)."""

from __future__ import annotations

import json
import random
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lmtune.config import dump_config, load_config
from lmtune.data.formats import RowError, Schema, detect_format, to_canonical
from lmtune.errors import UserError
from lmtune.evaluate.run import run_eval
from lmtune.losses.kto import KTOParams, kl_reference_point, kl_stats, kto_losses
from lmtune.models.load import load_tokenizer
from lmtune.tasks import build_task
from lmtune.train.run import run_training
from runkit import NEG, NOUNS, POS, config, tiny_causal_dir, train_events, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_base" / "test.jsonl"


# ---- the loss against TRL ------------------------------------------------------------------
def _trl_loss(
    logps: torch.Tensor,
    ref: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl: torch.Tensor,
    labels: torch.Tensor,
    params: KTOParams,
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> torch.Tensor:
    """TRL's KTOTrainer._compute_loss on these summed log-probs (precomputed reference), with
    a stand-in model whose per-token log-probs sum to them and an accelerator whose
    gather_for_metrics is `gather` (one process: the value itself)."""
    from trl.trainer.kto_trainer import KTOTrainer

    n, t = len(logps), 5
    ids, kl_ids = torch.arange(n * t).view(n, t), torch.arange(n * t).view(n, t) + 1000

    def per_token(sums: torch.Tensor) -> torch.Tensor:
        # [n, t-1] log-probs on completion positions (the last two) whose sum is `sums`.
        out = torch.zeros(n, t - 1, dtype=torch.float64)
        out[:, -2], out[:, -1] = sums * 0.25, sums * 0.75
        return out

    def model(input_ids: torch.Tensor, **_: object) -> types.SimpleNamespace:
        lp = per_token(kl_logps if torch.equal(input_ids, kl_ids) else logps)
        return types.SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=lp)

    mask = torch.zeros(n, t, dtype=torch.long)
    mask[:, -2:] = 1
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=gather),
        beta=params.beta,
        desirable_weight=params.desirable_weight,
        undesirable_weight=params.undesirable_weight,
        loss_type="kto",
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    fake._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, fake)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(n, t, dtype=torch.long),
        "completion_mask": mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones(n, t, dtype=torch.long),
        "KL_completion_mask": mask,
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    return KTOTrainer._compute_loss(fake, model, batch, return_outputs=False)


@pytest.mark.parametrize(
    ("params", "kl_shift"),
    [(KTOParams(), 0.3), (KTOParams(0.5, 1.33, 0.7), 0.3), (KTOParams(0.2), -2.0)],
)
def test_loss_matches_trl(params: KTOParams, kl_shift: float) -> None:
    """Same tensors, same loss within 1e-5: weights, beta, z0 from the mismatched pairs (a
    negative estimate clamped at 0, kl_shift -2) and rows of both kinds."""
    g = torch.Generator().manual_seed(0)
    n = 8
    logps, ref = (
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    ref_kl = -20 * torch.rand(n, generator=g, dtype=torch.float64)
    kl_logps = ref_kl + kl_shift + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    kl = kl_reference_point(kl_logps, ref_kl)
    ours, rewards = kto_losses(logps, ref, labels, kl, params)
    theirs = _trl_loss(logps, ref, kl_logps, ref_kl, labels, params)
    assert float(ours.mean()) == pytest.approx(float(theirs), abs=1e-5)
    assert torch.allclose(rewards, params.beta * (logps - ref))
    assert (kl == 0) == (kl_shift < 0)


def test_kl_point_is_pooled_over_processes_as_trl_gathers_it() -> None:
    """Two processes, each with half of a batch: TRL gathers both KL estimates and averages
    them; lmtune all-reduces the sums and counts. Same z0 and same per-process loss as TRL,
    and with unequal shares still the one-process z0 of the whole batch."""
    g = torch.Generator().manual_seed(1)
    n, params = 8, KTOParams(0.3)
    logps, ref, ref_kl = (-20 * torch.rand(n, generator=g, dtype=torch.float64) for _ in "abc")
    kl_logps = ref_kl + 0.5 + torch.randn(n, generator=g, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    whole = kl_reference_point(kl_logps, ref_kl)
    halves = [slice(0, 4), slice(4, 8)]
    estimates = torch.stack([(kl_logps[h] - ref_kl[h]).mean() for h in halves])
    for me, other in (halves, halves[::-1]):
        stats_other = kl_stats(kl_logps[other], ref_kl[other])
        kl = kl_reference_point(kl_logps[me], ref_kl[me], lambda s, o=stats_other: s + o)
        assert float(kl) == pytest.approx(float(whole), abs=1e-12) and float(kl) > 0
        ours, _ = kto_losses(logps[me], ref[me], labels[me], kl, params)
        theirs = _trl_loss(
            logps[me], ref[me], kl_logps[me], ref_kl[me], labels[me], params, lambda _: estimates
        )
        assert float(ours.mean()) == pytest.approx(float(theirs), abs=1e-6)
    # Shares of 3 and 5 examples: still the mean over all 8 pairs (not a mean of two means).
    first, rest = slice(0, 3), slice(3, 8)
    pooled = kl_reference_point(
        kl_logps[first], ref_kl[first], lambda s: s + kl_stats(kl_logps[rest], ref_kl[rest])
    )
    assert float(pooled) == pytest.approx(float(whole), abs=1e-12)


def test_kl_point_is_detached_and_gradient_flows_only_through_the_matched_logps() -> None:
    logps = torch.tensor([-3.0, -4.0], requires_grad=True)
    kl_logps = torch.tensor([-2.0, -2.5], requires_grad=True)
    kl = kl_reference_point(kl_logps, torch.tensor([-3.0, -3.0]))
    losses, _ = kto_losses(
        logps, torch.tensor([-3.5, -3.5]), torch.tensor([True, False]), kl, KTOParams()
    )
    losses.sum().backward()
    assert kl_logps.grad is None and logps.grad is not None and float(kl) == pytest.approx(0.75)
    # Hand values: z0 = 0.75; desirable r = 0.5 -> 1 - sigmoid(0.1 * (0.5 - 0.75)).
    losses = losses.detach()
    assert float(losses[0]) == pytest.approx(1 - torch.sigmoid(torch.tensor(-0.025)).item())
    assert float(losses[1]) == pytest.approx(1 - torch.sigmoid(torch.tensor(0.125)).item())


# ---- rows --------------------------------------------------------------------------------
def test_unpaired_rows_text_chat_and_labels() -> None:
    cols = ["prompt", "completion", "label"]
    assert detect_format(cols, {}, "kto", "auto", "f.jsonl") == "unpaired"
    assert detect_format(["prompt", "chosen", "rejected"], {}, "kto", "auto", "f") == "preference"
    schema = Schema("unpaired", {})
    row = to_canonical({"prompt": "Hi?", "completion": "Hello.", "label": "false"}, schema)
    assert row == {"prompt": "Hi?", "completion": "Hello.", "label": False}
    chat = to_canonical(
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "completion": [{"role": "assistant", "content": "Hello."}],
            "label": True,
        },
        schema,
    )
    assert chat["prompt"] == [{"role": "user", "content": "Hi?"}] and chat["completion"] == "Hello."
    with pytest.raises(RowError, match="'label' must be true or false"):
        to_canonical({"prompt": "a", "completion": "b", "label": "maybe"}, schema)
    with pytest.raises(RowError, match="'completion' is empty"):
        to_canonical({"prompt": "a", "completion": " ", "label": 1}, schema)
    with pytest.raises(UserError, match="kto"):
        detect_format(["text"], {}, "kto", "auto", "f")


def test_pairs_become_two_rows_with_mismatched_kl_completions(tmp_path: Path) -> None:
    cfg = config(tmp_path, task="kto", model={"name_or_path": str(tiny_causal_dir(tmp_path))})
    task = build_task("kto", load_tokenizer(cfg.model), cfg)
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    feats = task.prepare_features([f for r in rows for f in task.encode(r)])
    assert [f["label"] for f in feats] == [True, False] * 3
    assert feats[0]["group"] == feats[1]["group"] != feats[2]["group"]
    for f in feats:  # the KL completion always belongs to another prompt
        other = next(g for g in feats if g["completion_ids"] == f["kl_ids"])
        assert other["prompt_ids"] != f["prompt_ids"]
    batch = task.collate(feats)
    assert batch["input_ids"].shape[0] == batch["kl_input_ids"].shape[0] == 6


def test_config_section_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = load_config(None, ["task=kto", "kto.beta=0.2", "kto.desirable_weight=1.5"])
    assert cfg.section("kto").beta == 0.2
    again = tmp_path / "config.yaml"
    again.write_text(dump_config(cfg))
    assert "kto:" in again.read_text() and load_config(again).section("kto").desirable_weight == 1.5
    with pytest.raises(UserError, match="kto section only applies to task kto"):
        load_config(None, ["task=dpo", "kto.beta=0.2"])
    with pytest.raises(UserError, match="unknown|extra"):
        load_config(None, ["task=kto", "kto.betta=0.2"])
    with pytest.raises(UserError, match="task kto reads data.format unpaired"):
        load_config(None, ["task=kto", "data.format=chat"])
    assert load_config(None, ["task=dpo"]).section("kto").beta == 0.1  # defaults when absent


# ---- training ----------------------------------------------------------------------------
def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        noun = rng.choice(NOUNS)
        out.append(
            {
                "prompt": f"How was {noun}? ({i})",
                "chosen": f"{noun} was {rng.choice(POS)}",
                "rejected": f"{noun} was {rng.choice(NEG)}",
            }
        )
    return out


def _train(tmp: Path, adapter: dict, data: Path, **kto: object) -> tuple[dict, list[dict]]:
    cfg = config(
        tmp,
        task="kto",
        model={"name_or_path": str(tiny_causal_dir(tmp))},
        adapter=adapter,
        data={"train": str(data), "split": {"eval": 0.2, "test": 0.2}},
        train={"epochs": 3, "lr": 3e-2},
        kto=kto,
    )
    summary = run_training(cfg, quiet=True)
    return summary, train_events(Path(cfg.run.output_dir))


def test_lora_kto_learns_the_preferred_completions(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pref.jsonl", _rows(150))
    lora = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}
    summary, events = _train(tmp_path, lora, data)
    run = Path(summary["model_dir"]).parent
    assert not (run / "kto_reference.json").exists()  # the reference is the disabled adapter
    before, after = summary["eval_before"]["test"], summary["test"]
    assert before["reward_margin"] == 0.0 and before["eval_loss"] == pytest.approx(0.5, abs=1e-5)
    assert events[-1]["loss"] < events[0]["loss"] - 0.02
    assert after["reward_accuracy"] >= 0.8 > before["reward_accuracy"] - 0.5
    assert after["reward_desirable"] > after["reward_undesirable"]
    again = run_eval(run, run / "data" / "test.jsonl", tmp_path / "eval")  # `lmtune eval`
    assert again["reward_accuracy"] == after["reward_accuracy"]


def test_full_kto_on_unpaired_rows_precomputes_the_reference(tmp_path: Path) -> None:
    rows = []
    for i, r in enumerate(_rows(150)):
        good = i % 3 != 0  # unbalanced on purpose: more desirable than undesirable rows
        prompt = [{"role": "user", "content": r["prompt"]}] if i % 2 else r["prompt"]
        rows.append(
            {"prompt": prompt, "completion": r["chosen" if good else "rejected"], "label": good}
        )
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    summary, events = _train(tmp_path, {"type": "full"}, data, undesirable_weight=1.5)
    run = Path(summary["model_dir"]).parent
    cache = json.loads((run / "kto_reference.json").read_text())
    assert len(cache["logps"]) == sum(summary["data"].values())
    assert events[-1]["loss"] < events[0]["loss"]
    assert summary["test"]["label_accuracy"] > summary["eval_before"]["test"]["label_accuracy"]
    assert "reward_accuracy" not in summary["test"]  # unpaired rows: no pairs to compare


@pytest.mark.slow
@pytest.mark.skipif(not HH.is_file(), reason="../shared/data (HH-RLHF) is absent")
def test_kto_on_hh_rlhf_pairs_raises_held_out_reward_accuracy(tmp_path: Path) -> None:
    """The shipped config as it is, on a tiny random Llama: HH-RLHF pairs as unpaired rows."""
    cfg = load_config(
        ROOT / "configs" / "kto_hh_tiny.yaml",
        [
            f"run.output_dir={tmp_path / 'run'}",
            f"model.name_or_path={tiny_causal_dir(tmp_path)}",
            f"data.train={HH}",
        ],
    )
    summary = run_training(cfg, quiet=True)
    before, after = summary["eval_before"]["test"], summary["test"]
    print(
        f"\nKTO HH-RLHF test reward accuracy {before['reward_accuracy']:.3f} -> {after['reward_accuracy']:.3f}"
    )
    assert after["reward_accuracy"] > before["reward_accuracy"]
