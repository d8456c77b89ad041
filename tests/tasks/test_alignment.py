"""Task tier for preference learning: reward, DPO (LoRA and full), SimPO and ORPO train tiny
random models through run_training on a learnable synthetic preference set."""

from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtune.evaluate.run import run_eval
from lmtune.train.run import run_training
from runkit import (
    NEG,
    NOUNS,
    POS,
    config,
    tiny_bert_dir,
    tiny_causal_dir,
    train_events,
    write_jsonl,
)


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs a tiny model can learn: the chosen answer uses a positive word, the rejected a
    negative one. Held-out pairs combine nouns and words differently."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        noun = rng.choice(NOUNS)
        rows.append(
            {
                "prompt": f"How was {noun}? ({i})",
                "chosen": f"{noun} was {rng.choice(POS)}",
                "rejected": f"{noun} was {rng.choice(NEG)}",
            }
        )
    return rows


def _run(
    tmp_path: Path,
    task: str,
    model_dir: Path,
    adapter: str,
    lr: float,
    epochs: int = 4,
    **pref: object,
) -> tuple[dict, list[dict]]:
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows(200))
    cfg = config(
        tmp_path,
        task=task,
        model={"name_or_path": str(model_dir)},
        adapter={"type": adapter, "r": 8, "alpha": 16, "dropout": 0.0},
        data={"train": str(data), "split": {"eval": 0.2, "test": 0.2}},
        train={"epochs": epochs, "lr": lr},
        preference=pref,
    )
    summary = run_training(cfg, quiet=True)
    return summary, train_events(Path(cfg.run.output_dir))


def _report(name: str, summary: dict, events: list[dict], keys: tuple[str, ...]) -> None:
    before, after = summary["eval_before"]["test"], summary["test"]
    shown = ", ".join(f"{k} {before[k]:.3f}->{after[k]:.3f}" for k in keys)
    print(f"\n{name}: train loss {events[0]['loss']:.4f}->{events[-1]['loss']:.4f}; test {shown}")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_reward_model_learns_pairwise_preferences(tmp_path: Path, arch: str) -> None:
    model_dir = tiny_bert_dir(tmp_path) if arch == "bert" else tiny_causal_dir(tmp_path, "llama")
    summary, events = _run(tmp_path, "reward", model_dir, "full", 5e-3)
    _report(f"reward/{arch}", summary, events, ("eval_loss", "pairwise_accuracy", "mean_margin"))
    assert events[-1]["loss"] < 0.5 * events[0]["loss"]
    test = summary["test"]
    # (The untrained head scores pairs at random: anything from 0.4 to 0.8 is common.)
    assert test["pairwise_accuracy"] >= max(
        0.95, summary["eval_before"]["test"]["pairwise_accuracy"]
    )
    assert test["mean_margin"] > 1.0 and test["eval_pairs"] == 40
    run = Path(summary["model_dir"]).parent
    assert json.loads((run / "model" / "lmtune_model.json").read_text())["task"] == "reward"
    again = run_eval(run, run / "data" / "test.jsonl", tmp_path / "eval")  # `lmtune eval`
    assert again["pairwise_accuracy"] == test["pairwise_accuracy"]


@pytest.mark.parametrize(("arch", "adapter"), [("llama", "lora"), ("gpt2", "dora")])
def test_dpo_adapter_uses_the_disabled_adapter_as_reference(
    tmp_path: Path, arch: str, adapter: str
) -> None:
    summary, events = _run(tmp_path, "dpo", tiny_causal_dir(tmp_path, arch), adapter, 3e-2)
    _report(
        f"dpo/{arch}-{adapter}", summary, events, ("eval_loss", "reward_accuracy", "reward_margin")
    )
    run = Path(summary["model_dir"]).parent
    assert not (run / "reference_logps.json").exists()  # nothing to precompute with LoRA
    before, after = summary["eval_before"]["test"], summary["test"]
    assert before["reward_margin"] == 0.0 and before["eval_loss"] == pytest.approx(0.6931, abs=1e-4)
    assert events[-1]["loss"] < events[0]["loss"] - 0.03
    assert after["reward_accuracy"] >= 0.8 and after["reward_margin"] > 0.05
    lora_b = [
        v
        for k, v in load_file(str(run / "model" / "adapter_model.safetensors")).items()
        if "lora_B" in k
    ]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    # `lmtune eval` on the saved adapter: the reference is again the base, so it agrees.
    again = run_eval(run, run / "data" / "test.jsonl", tmp_path / "eval")
    assert again["reward_accuracy"] == after["reward_accuracy"]
    assert again["eval_loss"] == pytest.approx(after["eval_loss"], abs=1e-5)


def test_dpo_lora_precomputed_reference_matches_the_disabled_adapter(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "gpt2")
    cfg_file = model_dir / "config.json"  # real GPT-2 dropout: DPO must switch it off, else the
    hf = json.loads(cfg_file.read_text())  # policy would not equal its reference at step 0
    cfg_file.write_text(
        json.dumps({**hf, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1})
    )
    _run(tmp_path / "a", "dpo", model_dir, "lora", 3e-2, epochs=1)
    _run(tmp_path / "b", "dpo", model_dir, "lora", 3e-2, epochs=1, reference="precompute")
    assert (tmp_path / "b" / "run" / "reference_logps.json").is_file()
    on_the_fly = [e["loss"] for e in train_events(tmp_path / "a" / "run")]
    cached = [e["loss"] for e in train_events(tmp_path / "b" / "run")]
    assert on_the_fly[0] == pytest.approx(math.log(2), abs=1e-6)
    # Same reference either way. (Later steps drift apart by float noise that Adam at a high
    # learning rate amplifies, so only the first steps are compared.)
    assert cached[:8] == pytest.approx(on_the_fly[:8], abs=1e-5)


def test_dpo_full_caches_reference_and_resume_reuses_it(tmp_path: Path, monkeypatch) -> None:
    import lmtune.tasks.dpo as dpo

    calls: list[int] = []
    real = dpo.compute_reference

    def counting(model, task, features, batch_size):
        calls.append(len(features))
        return real(model, task, features, batch_size)

    monkeypatch.setattr(dpo, "compute_reference", counting)
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows(200))

    def cfg(out: str):
        return config(
            tmp_path,
            task="dpo",
            model={"name_or_path": str(model_dir)},
            adapter={"type": "full"},
            run={"output_dir": str(tmp_path / out), "seed": 1},
            data={"train": str(data), "split": {"eval": 0.2, "test": 0.2}},
            train={"epochs": 4, "lr": 1e-2, "eval_every": 5, "save_every": 5},
        )

    summary = run_training(cfg("whole"), quiet=True)
    events = train_events(tmp_path / "whole")
    _report("dpo/full", summary, events, ("eval_loss", "reward_accuracy", "reward_margin"))
    cache = json.loads((tmp_path / "whole" / "reference_logps.json").read_text())
    assert calls == [200] and len(cache["logps"]) == 200  # train + eval + test, computed once
    assert events[-1]["loss"] < 0.5 * events[0]["loss"]
    assert summary["test"]["reward_accuracy"] >= 0.9 and summary["test"]["reward_margin"] > 0.5

    calls.clear()
    run_training(cfg("split"), quiet=True, stop_after=10)
    cached = (tmp_path / "split" / "reference_logps.json").read_bytes()
    run_training(cfg("split"), resume=True, quiet=True)
    assert calls == [200]  # the first half computed them; --resume reused the cache
    assert (tmp_path / "split" / "reference_logps.json").read_bytes() == cached
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    # samples.json: test prompts answered before and after; --resume keeps the first half's
    # before column and adds the after one; report.html shows them escaped.
    first = json.loads((tmp_path / "whole" / "samples.json").read_text(encoding="utf-8"))
    again = json.loads((tmp_path / "split" / "samples.json").read_text(encoding="utf-8"))
    assert first["split"] == "test" and len(first["samples"]) == 4 and not first["notes"]
    page = (tmp_path / "whole" / "report.html").read_text(encoding="utf-8")
    for s, t in zip(first["samples"], again["samples"], strict=True):
        assert s["prompt"].startswith("How was") and s["reference_kind"] == "chosen"
        assert s["reference"].split(" was ")[1] in POS
        assert isinstance(s["before"], str) and isinstance(s["after"], str)
        assert (t["prompt"], t["before"]) == (s["prompt"], s["before"]) and t["after"] is not None
        assert all(html.escape(x) in page for x in (s["prompt"], s["before"], s["after"]))


def test_simpo_needs_no_reference(tmp_path: Path) -> None:
    summary, events = _run(
        tmp_path,
        "dpo",
        tiny_causal_dir(tmp_path, "llama"),
        "full",
        1e-2,
        loss="simpo",
        beta=2.0,
        simpo_gamma=0.5,
    )
    _report("simpo/full", summary, events, ("eval_loss", "reward_accuracy", "reward_margin"))
    assert not (Path(summary["model_dir"]).parent / "reference_logps.json").exists()
    assert events[-1]["loss"] < 0.5 * events[0]["loss"]
    assert summary["test"]["reward_accuracy"] >= 0.9


def test_orpo_lora_learns(tmp_path: Path) -> None:
    summary, events = _run(
        tmp_path,
        "orpo",
        tiny_causal_dir(tmp_path, "qwen2"),
        "lora",
        3e-2,
        epochs=6,
        orpo_lambda=1.0,
    )
    _report("orpo/lora", summary, events, ("eval_loss", "nll", "reward_accuracy", "reward_margin"))
    before, after = summary["eval_before"]["test"], summary["test"]
    assert events[-1]["loss"] < events[0]["loss"] - 0.05
    assert after["eval_loss"] < before["eval_loss"] and after["nll"] < before["nll"]
    assert after["reward_accuracy"] > max(before["reward_accuracy"], 0.75)
    assert after["reward_margin"] > before["reward_margin"]


def test_reward_ties_train_toward_equal_rewards(tmp_path: Path) -> None:
    """preference.ties: keep: a tie pulls both rewards together (loss ln 2 at equal rewards)
    and is left out of pairwise_accuracy."""
    from lmtune.losses.reward import bradley_terry
    from lmtune.train.run import setup

    rows = [
        {
            "prompt": f"How was it? ({i})",
            "response_a": f"it was {POS[i % 5]}",
            "response_b": f"it was {NEG[i % 5]}" if i % 3 else f"it was {POS[(i + 1) % 5]}",
            "preference": "a" if i % 3 else "tie",
        }
        for i in range(30)
    ]
    cfg = config(
        tmp_path,
        task="reward",
        model={"name_or_path": str(tiny_bert_dir(tmp_path))},
        data={"train": str(write_jsonl(tmp_path / "pw.jsonl", rows)), "split": {"eval": 0.0}},
        preference={"ties": "keep"},
    )
    parts = setup(cfg, tmp_path / "run")
    task, model = parts["task"], parts["model"].eval()
    feats = [task.encode(r) for r in parts["prepared"].splits["train"]]
    batch = task.collate(feats)
    tie = batch["tie"]
    assert int(tie.sum()) == 10
    with torch.no_grad():
        stats = task.pair_stats(model, batch)
        scores = task.rewards(model, batch)
    n = len(feats)
    assert stats["pairwise_accuracy"].numel() == 20  # decided pairs only
    expected = bradley_terry(scores[:n], scores[n:], batch["margin"], tie)
    assert torch.allclose(stats["loss"], expected)
    d = (scores[:n] - scores[n:])[tie]
    assert torch.allclose(
        stats["loss"][tie],
        -(torch.nn.functional.logsigmoid(d) + torch.nn.functional.logsigmoid(-d)) / 2,
    )
