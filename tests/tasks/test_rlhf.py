"""Task tier for online RL (task rlhf): a tiny random Llama learns to raise a verifiable reward
(examples/rewards.py:vowel_share) through run_training; the reference and KL behave; rollouts
are reused and clipped; a reward-model run works as the reward; user errors are clear."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import PreTrainedModel

from lmtune.errors import UserError
from lmtune.evaluate.run import run_eval
from lmtune.evaluate.score import FunctionReward, load_reward, run_score
from lmtune.train.run import run_training
from runkit import NEG, NOUNS, POS, config, tiny_causal_dir, train_events, write_jsonl
from tiny import make_causal, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "examples" / "data" / "prompts.jsonl"


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # rlhf.reward examples.rewards:... imports from the current folder


def _rlhf(
    tmp: Path,
    model_dir: Path,
    steps: int = 60,
    adapter: dict | None = None,
    lr: float = 3e-2,
    **rl: object,
) -> tuple[dict, list[dict]]:
    cfg = config(
        tmp,
        task="rlhf",
        model={"name_or_path": str(model_dir), "max_length": 64},
        adapter=adapter or {"type": "full"},
        data={"train": str(PROMPTS), "split": {"eval": 0.2, "test": 0.1}},
        train={"max_steps": steps, "batch_size": 4, "lr": lr, "eval_each_epoch": False},
        rlhf={
            "reward": "examples.rewards:vowel_share",
            "samples_per_prompt": 8,
            "max_new_tokens": 8,
            "kl_coef": 0.01,
            **rl,
        },
    )
    summary = run_training(cfg, quiet=True)
    return summary, train_events(Path(cfg.run.output_dir))


def _mean(events: list[dict], key: str) -> float:
    return sum(e[key] for e in events) / len(events)


def test_full_finetune_raises_the_reward(tmp_path: Path) -> None:
    summary, events = _rlhf(tmp_path, tiny_causal_dir(tmp_path))
    first, last = _mean(events[:10], "reward"), _mean(events[-10:], "reward")
    print(
        f"\nrlhf/full: mean reward steps 1-10 {first:.3f} -> 51-60 {last:.3f}; "
        f"KL {events[-1]['kl']:.2f}; eval reward {summary['eval_before']['eval']['reward']:.3f}"
        f" -> {summary['best_eval']['reward']:.3f}"
    )
    assert last > first + 0.25
    assert set(events[0]) >= {
        "loss",
        "reward",
        "reward_std",
        "kl",
        "completion_length",
        "clip_fraction",
    }
    # Step 1 scores the initial policy against its frozen copy: identical, KL exactly 0.
    assert events[0]["kl"] == 0.0 and events[-1]["kl"] > 0.1
    assert all(e["clip_fraction"] == 0.0 for e in events)  # one update per rollout: ratio 1
    assert summary["test"]["reward"] > summary["eval_before"]["test"]["reward"] + 0.2
    run = tmp_path / "run"
    done = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert len(done) == summary["test"]["eval_prompts"] == 4 and "completion" in done[0]
    # `lmtune eval` on the saved model: same greedy completions, same rewards (outside the run
    # a full fine-tune has no reference copy, so no KL).
    again = run_eval(run, run / "data" / "test.jsonl", tmp_path / "eval")
    assert again["reward"] == pytest.approx(summary["test"]["reward"], abs=1e-6)
    assert "kl" not in again


def test_lora_uses_the_disabled_adapter_as_reference_and_kl_in_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    copies: list[object] = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda x, *a: copies.append(x) or real(x, *a))
    # A random tiny model's output head is what the reward needs to move (its logits are near
    # uniform): train it in full beside the adapters. Disabling the adapter disables that copy
    # too, so the reference is still exactly the initial model.
    lora = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["lm_head"]}
    summary, events = _rlhf(
        tmp_path, tiny_causal_dir(tmp_path, "qwen2"), adapter=lora, advantage="grpo", kl_in="reward"
    )
    # No second copy of the model (peft copies only lm_head, the module to save).
    assert not any(isinstance(c, (PreTrainedModel, PeftModel)) for c in copies)
    first, last = _mean(events[:10], "reward"), _mean(events[-10:], "reward")
    print(f"\nrlhf/lora-grpo: mean reward {first:.3f} -> {last:.3f}; KL {events[-1]['kl']:.2f}")
    assert events[0]["kl"] == 0.0 and last > first + 0.25
    assert "kl" in summary["test"]  # the saved adapter's base is still the reference
    lora_b = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in lora_b.items() if "lora_B" in k)


def test_kl_penalty_holds_the_policy_near_the_reference(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    _, free = _rlhf(tmp_path / "free", model_dir, steps=40, kl_coef=0.0)
    _, held = _rlhf(tmp_path / "held", model_dir, steps=40, kl_coef=0.5)
    assert "kl" not in free[0]  # kl_coef 0: no reference at all
    assert _mean(held[-10:], "kl") < 2.0
    assert _mean(free[-10:], "reward") > _mean(held[-10:], "reward")


COUNTING = """
calls = []

def score(prompt, completion):
    calls.append(completion)
    return float(len(completion) % 7)
"""


def test_rollouts_are_reused_and_the_ratio_is_clipped(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "counting_reward.py").write_text(textwrap.dedent(COUNTING))
    monkeypatch.syspath_prepend(str(tmp_path))
    _, events = _rlhf(
        tmp_path,
        tiny_causal_dir(tmp_path),
        steps=12,
        lr=5e-2,
        reward="counting_reward:score",
        updates_per_rollout=3,
        clip_range=0.05,
    )
    import counting_reward

    # 12 steps x 4 prompts x 8 samples, sampled every third step; greedy evaluation of the
    # 8 eval + 4 test prompts before training, 8 eval prompts at the end, then the 4 test ones.
    assert len(counting_reward.calls) == 12 * 4 * 8 // 3 + (8 + 4) + 8 + 4
    clip = [e["clip_fraction"] for e in events]
    assert clip[0::3] == [0.0] * 4 and all(c > 0 for i, c in enumerate(clip) if i % 3)
    assert [e["reward"] for e in events[0::3]] == [e["reward"] for e in events[1::3]]


def _reward_model_run(tmp: Path) -> Path:
    rng = random.Random(0)
    rows = [
        {
            "prompt": f"How was {n}? ({i})",
            "chosen": f"{n} was {rng.choice(POS)}",
            "rejected": f"{n} was {rng.choice(NEG)}",
        }
        for i, n in enumerate(rng.choice(NOUNS) for _ in range(120))
    ]
    cfg = config(
        tmp,
        task="reward",
        model={"name_or_path": str(tiny_causal_dir(tmp, "gpt2"))},
        adapter={"type": "full"},
        run={"output_dir": str(tmp / "rm"), "seed": 1},
        data={"train": str(write_jsonl(tmp / "pairs.jsonl", rows))},
        train={"epochs": 2, "lr": 5e-3, "eval_before": False},
    )
    run_training(cfg, quiet=True)
    return tmp / "rm"


def test_reward_model_run_as_the_reward(tmp_path: Path) -> None:
    rm = _reward_model_run(tmp_path)
    summary, events = _rlhf(tmp_path, tiny_causal_dir(tmp_path), steps=6, reward=str(rm))
    assert all(isinstance(e["reward"], float) for e in events)
    # The rewards in completions.jsonl are what `lmtune score` gives the same rows.
    lines = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    done = [json.loads(x) for x in lines]
    write_jsonl(
        tmp_path / "c.jsonl", [{"prompt": d["prompt"], "response": d["completion"]} for d in done]
    )
    scored, _ = run_score(rm, tmp_path / "c.jsonl")
    assert [s["score"] for s in scored] == pytest.approx([d["reward"] for d in done], abs=1e-5)


def test_reward_source_errors_are_user_errors(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "bad_rewards.py").write_text(
        "def text(p, c):\n    return 'high'\n\ndef nan(p, c):\n    return float('nan')\n\n"
        "def boom(p, c):\n    raise KeyError('x')\n\nLIMIT = 3\n"
    )
    (tmp_path / "broken_import.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="no module 'nowhere_xyz' in the current directory"):
        load_reward("nowhere_xyz:f")
    with pytest.raises(UserError, match="importing broken_import failed.*not_a_real_module_xyz"):
        load_reward("broken_import:f")
    with pytest.raises(UserError, match=r"has no 'missing'; its functions: boom, nan, text"):
        load_reward("bad_rewards:missing")
    with pytest.raises(UserError, match="has a non-callable 'LIMIT'"):
        load_reward("bad_rewards:LIMIT")
    with pytest.raises(UserError, match=r"returned 'high' \(str\).*finite number"):
        FunctionReward("bad_rewards:text")(["p"], ["c"])
    with pytest.raises(UserError, match="returned nan"):
        FunctionReward("bad_rewards:nan")(["p"], ["c"])
    with pytest.raises(UserError, match="raised KeyError"):
        FunctionReward("bad_rewards:boom")(["p"], ["c"])
    with pytest.raises(UserError, match="not module:function"):
        load_reward(str(tmp_path / "no_such_folder"))
    tok = make_tokenizer(pad=True)
    policy = tmp_path / "policy"
    from lmtune.models.export import save_model

    save_model(make_causal("llama", tok), tok, policy, extra={"task": "sft"})
    with pytest.raises(UserError, match="a sft model, not a reward model"):
        load_reward(str(policy))
    assert FunctionReward("examples.rewards:vowel_share")(["p"], ["aeio xyz"]) == [4 / 7]


def test_config_and_prompt_rows(tmp_path: Path) -> None:
    from lmtune.config import load_config
    from lmtune.data.pipeline import prepare_data

    with pytest.raises(UserError, match="task rlhf needs rlhf.reward"):
        load_config(None, ["task=rlhf"])
    with pytest.raises(UserError, match="rlhf section only applies to task rlhf"):
        load_config(None, ["task=sft", "rlhf.kl_coef=0.2"])
    with pytest.raises(UserError, match="max_new_tokens .* must be below"):
        load_config(None, ["task=rlhf", "rlhf.reward=m:f", "rlhf.max_new_tokens=300"])
    with pytest.raises(UserError, match="task rlhf reads prompts"):
        load_config(None, ["task=rlhf", "rlhf.reward=m:f", "data.format=chat"])
    rows = [
        {"prompt": "hi"},
        {"prompt": [{"role": "user", "content": "hello"}]},
        {"prompt": "  "},
        {"prompt": [{"role": "assistant", "content": "x"}]},
        {"text": "no"},
    ]
    data = write_jsonl(tmp_path / "p.jsonl", rows * 4)
    cfg = load_config(
        None,
        [
            "task=rlhf",
            "rlhf.reward=m:f",
            f"data.train={data}",
            "data.split.eval=0",
            "data.max_bad_fraction=0.9",
        ],
    )
    out = prepare_data(cfg, tmp_path / "run")
    assert out.format == "prompt"
    assert [r["prompt"] for r in out.splits["train"]] == [
        "hi",
        [{"role": "user", "content": "hello"}],
    ]
    reasons = [
        json.loads(x)["reason"]
        for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()
    ]
    assert any("empty" in r for r in reasons) and any("assistant turn" in r for r in reasons)
    assert any("missing field 'prompt'" in r for r in reasons)


def test_shipped_config_runs_with_a_tiny_model(tmp_path: Path) -> None:
    from lmtune.config import load_config

    cfg = load_config(
        ROOT / "configs" / "rlhf_reward_fn.yaml",
        [
            f"model.name_or_path={tiny_causal_dir(tmp_path)}",
            "model.max_length=64",
            f"run.output_dir={tmp_path / 'run'}",
            "rlhf.max_new_tokens=6",
            "train.max_steps=3",
            "train.eval_every=3",
            "train.precision=fp32",
        ],
    )
    summary = run_training(cfg, quiet=True)
    events = train_events(tmp_path / "run")
    assert [e["step"] for e in events] == [1, 2, 3] and events[0]["kl"] == 0.0
    assert summary["best_eval"]["eval_prompts"] == 8


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Sampling draws from the seeded random stream the checkpoint restores, and the frozen
    reference is copied from the initial model before the checkpoint loads."""
    model_dir = tiny_causal_dir(tmp_path)

    def cfg(out: str):
        return config(
            tmp_path,
            task="rlhf",
            run={"output_dir": str(tmp_path / out), "seed": 1},
            model={"name_or_path": str(model_dir), "max_length": 64},
            adapter={"type": "full"},
            data={"train": str(PROMPTS), "split": {"eval": 0.2}},
            train={
                "max_steps": 10,
                "batch_size": 4,
                "lr": 3e-2,
                "eval_every": 5,
                "save_every": 5,
                "eval_before": False,
            },
            rlhf={"reward": "examples.rewards:vowel_share", "max_new_tokens": 6, "kl_coef": 0.1},
        )

    run_training(cfg("whole"), quiet=True)
    run_training(cfg("split"), quiet=True, stop_after=5)
    run_training(cfg("split"), resume=True, quiet=True)
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    assert train_events(tmp_path / "whole")[-1]["kl"] == pytest.approx(
        train_events(tmp_path / "split")[-1]["kl"], abs=1e-5
    )
