"""Forgetting mitigation through real (tiny) training runs: off is a no-op, L2-SP/EWC pull
weights back, the penalty is counted once per optimizer step, replay mixes rows in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtune.train.run import run_training
from runkit import (
    NOUNS,
    config,
    instruction_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    train_events,
    write_jsonl,
)

REFERENCE = [
    "The weather today is sunny with a light breeze from the west.",
    "In the morning we walk to the park, and in the evening we read books at home.",
    "She sells sea shells by the sea shore.",
] * 6


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _sft(tmp_path: Path, name: str, model_dir: Path, data: Path, **sections) -> dict:
    train = {"epochs": 1, "batch_size": 8, **sections.pop("train", {})}
    cfg = config(
        tmp_path / name,
        task="sft",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "full"},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train=train,
        **sections,
    )
    return run_training(cfg, quiet=True)


def test_measuring_with_mitigation_off_leaves_training_bit_identical(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_rows(64))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(REFERENCE))
    plain = _sft(tmp_path, "plain", model_dir, data)
    measured = _sft(
        tmp_path,
        "measured",
        model_dir,
        data,
        forgetting={"reference": str(ref), "mitigation": {"l2sp": 0.0, "ewc": {"weight": 0.0}}},
    )
    a, b = _weights(tmp_path / "plain" / "run"), _weights(tmp_path / "measured" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "forgetting" not in plain and "overfitting" in plain
    f = json.loads((tmp_path / "measured" / "run" / "forgetting.json").read_text())
    assert f == measured["forgetting"]
    assert f["measure"] == "perplexity" and f["higher_is_better"] is False
    assert f["before"] > 1 and f["after"] > 1 and f["after"] != f["before"]
    assert f["abs_change"] == pytest.approx(f["after"] - f["before"])
    assert f["rel_change"] == pytest.approx((f["after"] - f["before"]) / f["before"])
    assert not any("penalty" in e for e in train_events(tmp_path / "measured" / "run"))


def test_penalty_counts_once_per_step_so_accum_4x2_equals_8x1(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_rows(64))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(REFERENCE))
    mit = {"reference": str(ref), "mitigation": {"l2sp": 5.0, "ewc": {"weight": 5.0, "samples": 4}}}
    sa = _sft(
        tmp_path, "a", model_dir, data, forgetting=mit, train={"batch_size": 8, "grad_accum": 1}
    )
    sb = _sft(
        tmp_path, "b", model_dir, data, forgetting=mit, train={"batch_size": 4, "grad_accum": 2}
    )
    assert sa["train_steps"] == sb["train_steps"] >= 3
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    pen = [e["penalty"] for e in train_events(tmp_path / "a" / "run")]
    assert (
        len(pen) == sa["train_steps"] and pen[0] == 0.0 and pen[-1] > 0
    )  # 0 at the anchor, then grows
    assert [e["penalty"] for e in train_events(tmp_path / "b" / "run")] == pytest.approx(
        pen, rel=1e-4
    )


def _noun_rows(n: int) -> list[dict[str, str]]:
    """A second task on the same sentences: which noun (3 labels), not which sentiment."""
    rows = sentiment_rows(n, seed=7)
    return [
        {"text": r["text"], "label": f"n{NOUNS.index(r['text'].split(' was ')[0]) % 3}"}
        for r in rows
    ]


def _drift(run: Path, start: dict[str, torch.Tensor]) -> float:
    w = _weights(run)
    return sum(
        float((w[k] - start[k]).pow(2).sum()) for k in start if not k.startswith("classifier")
    )


def test_prior_task_accuracy_and_l2sp_ewc_pull_back(tmp_path: Path) -> None:
    bert = tiny_bert_dir(tmp_path)
    common = {"task": "classification", "adapter": {"type": "full"}}
    a = config(
        tmp_path / "a",
        **common,
        model={"name_or_path": str(bert), "max_length": 24},
        data={"train": str(write_jsonl(tmp_path / "a.jsonl", sentiment_rows(160)))},
        train={"epochs": 4, "early_stopping": {"metric": "accuracy", "mode": "max"}},
    )
    sa = run_training(a, quiet=True)
    assert sa["best_eval"]["accuracy"] >= 0.9
    a_model = Path(a.run.output_dir) / "model"
    start = _weights(Path(a.run.output_dir))
    b_data = write_jsonl(tmp_path / "b.jsonl", _noun_rows(160))

    def run_b(name: str, mitigation: dict) -> dict:
        cfg = config(
            tmp_path / name,
            **common,
            model={"name_or_path": str(a_model), "max_length": 24},
            data={"train": str(b_data)},
            train={"epochs": 3},
            forgetting={"prior": "auto", "mitigation": mitigation},
        )
        return run_training(cfg, quiet=True)

    none = run_b("none", {})
    l2sp = run_b("l2sp", {"l2sp": 1.0})
    ewc = run_b("ewc", {"ewc": {"weight": 1.0, "samples": 32}})
    for s in (none, l2sp, ewc):
        f = s["forgetting"]
        assert f["measure"] == "prior_accuracy" and f["higher_is_better"] is True
        # Before training B, A's head on A's encoder: exactly A's own eval accuracy.
        assert f["before"] == pytest.approx(sa["best_eval"]["accuracy"])
    assert none["best_eval"]["accuracy"] > 0.5  # B's task (3 labels) is being learnt ...
    assert none["forgetting"]["abs_change"] < -0.1  # ... and the sentiment task forgotten
    d_none, d_l2sp, d_ewc = (_drift(tmp_path / n / "run", start) for n in ("none", "l2sp", "ewc"))
    assert d_l2sp < 0.5 * d_none and d_ewc < 0.5 * d_none
    assert l2sp["forgetting"]["after"] > none["forgetting"]["after"]
    assert ewc["forgetting"]["after"] > none["forgetting"]["after"]


def test_replay_mixes_reference_text_into_sft(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_rows(48))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(REFERENCE))
    without = _sft(
        tmp_path,
        "without",
        model_dir,
        data,
        train={"epochs": 2},
        forgetting={"reference": str(ref)},
    )
    replay = {"reference": str(ref), "mitigation": {"replay": {"data": str(ref), "fraction": 0.25}}}
    with_replay = _sft(tmp_path, "with", model_dir, data, train={"epochs": 2}, forgetting=replay)
    n_train = without["data"]["train"]
    rows = with_replay["forgetting"]["mitigation"]["replay"]["rows"]
    assert rows == round(n_train * 0.25 / 0.75)
    assert with_replay["train_samples"] > without["train_samples"]
    # Replaying the reference text keeps its perplexity lower than training without it.
    assert with_replay["forgetting"]["after"] < without["forgetting"]["after"]
