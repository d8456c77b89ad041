"""DDP and FSDP2 in 2 gloo processes reach the weights and metrics of 1 process.

Each test trains one task/adapter/strategy twice from the same tiny model and data: in this
process with batch 8 (strategy none), and through `lmtune train --nproc 2` with batch 4 per
process (the same global batch). The engines average gradients over processes and the loop
normalises by the loss units of the whole step, so the results must agree to float rounding;
a wrong scale (the average taken as the sum) or a missed sync is off by far more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lmtune.config import dump_config
from lmtune.train.run import run_training
from runkit import (
    config,
    folder_tensors,
    instruction_rows,
    qa_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    tiny_qa_dir,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[2]


def lmtune(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m lmtune ARGS` as a user runs it (this tree's sources first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lmtune", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def _pairs() -> list[dict[str, str]]:
    words = ["good", "fine", "nice", "great"] * 8
    return [
        {"prompt": f"How was {w} number {i}?", "chosen": f"it was {w}", "rejected": f"not {w}"}
        for i, w in enumerate(words)
    ]


def _sections(tmp: Path, task: str, adapter: str) -> dict[str, Any]:
    """Config sections of a tiny run of `task` with `adapter` (full, lora or dora); task
    simpo is dpo with preference.loss simpo."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    ad = {"type": adapter, **(lora if adapter != "full" else {})}
    extra: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if task == "classification":
        model = tiny_bert_dir(tmp)
        data = {"train": str(write_jsonl(tmp / "d.jsonl", sentiment_rows(48)))}
    elif task == "qa":
        model = tiny_qa_dir(tmp)
        data = {"train": str(write_jsonl(tmp / "d.jsonl", qa_rows(48)))}
        extra["qa"] = {"doc_stride": 16, "max_answer_length": 4}  # windows of 64 tokens
        # Softmax over positions ignores a shift, so the span head's bias and the last
        # LayerNorm's bias have zero gradient by construction: AdamW would scale their float
        # rounding noise to full-size steps. Momentum SGD keeps the comparison on gradients.
        train = {"optimizer": "sgd", "lr": 0.1}
    elif task == "sft":
        model = tiny_causal_dir(tmp, "llama")
        rows = instruction_rows(48)
        data = {"train": str(write_jsonl(tmp / "d.jsonl", rows)), "template": "alpaca"}
    elif task == "rlhf":
        model = tiny_causal_dir(tmp, "llama")
        data = {"train": str(ROOT / "examples" / "data" / "prompts.jsonl")}
        rl = {"samples_per_prompt": 4, "max_new_tokens": 6, "kl_coef": 0.1}
        extra["rlhf"] = {"reward": "examples.rewards:vowel_share", **rl}
    elif task == "kto":
        # Unpaired rows, mostly desirable: training raises the completions the mismatched
        # (KL) pairs are made of, so z0 is positive and differs between half batches.
        model = tiny_causal_dir(tmp, "llama")
        rows = [
            {"prompt": p["prompt"], "completion": p["chosen"], "label": True}
            if i % 4
            else {"prompt": p["prompt"], "completion": p["rejected"], "label": False}
            for i, p in enumerate(_pairs())
        ]
        data = {"train": str(write_jsonl(tmp / "d.jsonl", rows)), "format": "auto"}
    else:  # preference pairs: reward, dpo, simpo, orpo
        model = tiny_causal_dir(tmp, "llama")
        data = {"train": str(write_jsonl(tmp / "d.jsonl", _pairs())), "format": "auto"}
        if task == "simpo":
            task, extra["preference"] = "dpo", {"loss": "simpo", "beta": 2.0, "simpo_gamma": 0.5}
    return {
        "task": task,
        "model": {"name_or_path": str(model), "max_length": 160 if task == "sft" else 64},
        "adapter": ad,
        "data": data,
        "train": {
            "max_steps": 3,
            "lr": 1e-2,
            "eval_every": 1,
            "eval_before": False,
            "save_every": 2,
            **train,
        },
        **extra,
    }


def _two_processes(tmp: Path, sections: dict[str, Any], *overrides: str) -> Path:
    """Train the config with 2 processes through the CLI; returns the run folder."""
    cfg = config(tmp / "two", **sections)
    path = tmp / "two.yaml"
    path.write_text(dump_config(cfg))
    r = lmtune("train", str(path), "train.batch_size=4", *overrides, "--nproc", "2", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(cfg.run.output_dir)


def _evals(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "eval"]


def assert_same_run(one: Path, two: Path, atol: float = 1e-4) -> None:
    """Same final weights (model/), and the same evaluations (counts exactly)."""
    a, b = folder_tensors(one / "model"), folder_tensors(two / "model")
    assert a.keys() == b.keys() and a
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst
    ea, eb = _evals(one), _evals(two)
    assert len(ea) == len(eb) >= 3
    for x, y in zip(ea, eb, strict=True):
        for key in x.keys() - {"time", "elapsed_s"}:
            if key.endswith(("_examples", "_tokens")):
                assert x[key] == y[key], (key, x, y)
            elif isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=atol), (key, x, y)


# make test runs one case per strategy x adapter kind and task family (about 40 s each on two
# cores), and one for each code path of its own (KTO's KL reference point pooled across
# processes, seeded rollouts under FSDP); the rest of the matrix is marked slow (pytest -m slow).
QUICK = {
    ("sft", "lora", "ddp"),
    ("sft", "full", "fsdp"),
    ("dpo", "lora", "fsdp"),
    ("classification", "dora", "ddp"),
    ("kto", "full", "ddp"),
    ("rlhf", "lora", "fsdp"),
}
TASKS = ("sft", "classification", "qa", "reward", "dpo", "simpo", "orpo", "kto", "rlhf")
CASES = [
    pytest.param(*case, marks=() if case in QUICK else pytest.mark.slow)
    for case in [
        (task, adapter, strategy)
        for strategy in ("ddp", "fsdp")
        for task in TASKS
        for adapter in ("full", "lora")
    ]
    + [("sft", "dora", "fsdp"), ("classification", "dora", "ddp")]
    + [("kto", "dora", "fsdp"), ("rlhf", "dora", "ddp"), ("qa", "dora", "fsdp")]
]


@pytest.mark.multiproc
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("task", "adapter", "strategy"), CASES)
def test_two_processes_equal_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, adapter: str, strategy: str
) -> None:
    monkeypatch.chdir(ROOT)  # rlhf.reward examples.rewards:... imports from the current folder
    sections = _sections(tmp_path, task, adapter)
    one = config(tmp_path / "one", **sections)
    s1 = run_training(one, quiet=True)
    assert s1["world_size"] == 1 and s1["strategy"] == "none"
    two = _two_processes(tmp_path, sections, f"train.distributed.strategy={strategy}")
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["strategy"] == strategy
    # A full reward model ends up to 1.3e-4 apart (one down_proj entry, the same under DDP
    # and FSDP: the shorter padded half batches, not the engine), most likely AdamW's first
    # steps dividing near-zero gradients by their own size; far below one step of lr 1e-2.
    assert_same_run(
        Path(one.run.output_dir), two, 5e-4 if (task, adapter) == ("reward", "full") else 1e-4
    )
    # The weights moved: equality is not two untouched copies.
    before = folder_tensors(Path(sections["model"]["name_or_path"]))
    after = folder_tensors(two / "model")
    if adapter == "full":
        moved = max(float((after[k] - before[k]).abs().max()) for k in after if k in before)
        assert moved > 1e-3
    else:
        assert any(float(t.abs().max()) > 0 for k, t in after.items() if "lora_B" in k)
    # A generating task answers its sample prompts after training on the main process alone
    # (an FSDP module must not wait there for the other ranks, which wait at a barrier).
    if (Path(one.run.output_dir) / "samples.json").is_file():
        samples = json.loads((two / "samples.json").read_text())["samples"]
        assert samples and all(isinstance(s["after"], str) for s in samples)
    # A sharded checkpoint: one DCP metadata file, a shard per process, no leftovers.
    ckpts = sorted((two / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-0000002", "step-0000003"]
    assert (ckpts[-1] / ".metadata").is_file() and len(list(ckpts[-1].glob("*.distcp"))) == 2
    assert torch.load(ckpts[-1] / "rng-1.pt", weights_only=True)["torch"].numel() > 0
