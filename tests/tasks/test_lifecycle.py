"""The task registry and lifecycle: every spec builds a Task; the reference passes of dpo and
rlhf leave LoRA dropout as configured; rlhf's rollout reuse follows the loop's step boundary
(begin_step), not a count of its own loss calls."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lmtune.config import load_config
from lmtune.errors import UserError
from lmtune.models.adapters import apply_adapter
from lmtune.models.load import load_model, load_tokenizer
from lmtune.tasks import SPECS, TASKS, build_task, spec
from lmtune.tasks.base import Task
from lmtune.tasks.spec import load_object
from runkit import config, tiny_causal_dir

ROOT = Path(__file__).resolve().parents[2]
LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.5}
ROW = {"prompt": "How was the film?", "chosen": " great fun", "rejected": " dull and long"}


def test_every_spec_names_a_task_class_of_that_name() -> None:
    for s in SPECS:
        cls = load_object(s.target)
        assert issubclass(cls, Task) and cls.name == s.name, s.name
        assert s.formats and s.metric[1] in ("min", "max")
    assert spec("dpo").peft_task_type == "CAUSAL_LM" and spec("qa").peft_task_type == "QUESTION_ANS"
    assert spec("classification").serve == "classifier" and spec("reward").serve is None
    with pytest.raises(ValueError, match="unknown task 'nope' \\(known: classification, sft"):
        spec("nope")
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_config(None, ["task=nope"])


def test_base_lifecycle_defaults_are_no_ops() -> None:
    class Minimal(Task):
        name = "sft"

    t = Minimal()
    feats = [{"length": 1}]
    assert t.prepare_features(feats) is feats and t.model_meta() == {} and t.step_metrics() == {}
    assert t.observe_train([]) is None and t.begin_step(0) is None and not t.needs_reference
    assert t.default_metric == ("eval_loss", "min")
    with pytest.raises(UserError, match="task sft has no predict"):
        t.predict_rows(torch.nn.Linear(1, 1), [], 1)


def test_no_module_probes_a_task_with_hasattr() -> None:
    src = ROOT / "src" / "lmtune"
    for path in src.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for probe in ("hasattr(task", "getattr(task", "hasattr(self.task", "getattr(self.task"):
            assert probe not in text, f"{path}: {probe}"


def _policy(tmp: Path, task: str, **sections: object) -> tuple[Task, torch.nn.Module]:
    model_dir = tiny_causal_dir(tmp, "gpt2")
    cfg_file = model_dir / "config.json"  # GPT-2 with its real dropout in every block
    hf = json.loads(cfg_file.read_text())
    cfg_file.write_text(
        json.dumps({**hf, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1})
    )
    cfg = config(tmp, task=task, model={"name_or_path": str(model_dir)}, adapter=LORA, **sections)
    tok = load_tokenizer(cfg.model)
    model = apply_adapter(load_model(cfg.model, task, tok), cfg.adapter, task)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # as after some training: B = 0 would hide any LoRA dropout
            p.data.normal_(0, 0.5)
    return build_task(task, tok, cfg, fmt="preference"), model


def _two_train_forwards_differ(model: torch.nn.Module) -> bool:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.train()
    with torch.no_grad():
        return not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def _dropout_ps(model: torch.nn.Module) -> tuple[set[float], set[float]]:
    lora, base = set(), set()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout):
            (lora if "lora_dropout" in name else base).add(m.p)
    return lora, base


def test_dpo_reference_leaves_lora_dropout_on(tmp_path: Path) -> None:
    task, model = _policy(tmp_path, "dpo", preference={"reference": "precompute"})
    feats = [task.encode(ROW)]
    task.prepare_reference(model, feats, [], tmp_path, 4)
    lora, base = _dropout_ps(model)
    assert lora == {0.5} and base == {0.0}  # base off from load (spec), LoRA as configured
    assert _two_train_forwards_differ(model)
    # The precomputed reference is the eval-mode function: recomputing it gives the same values.
    again = [task.encode(ROW)]
    (tmp_path / "again").mkdir()
    task.prepare_reference(model, again, [], tmp_path / "again", 4)
    assert again[0]["ref_chosen"] == feats[0]["ref_chosen"]
    assert model.training  # every module's mode restored


def test_dpo_on_the_fly_reference_is_deterministic_in_train_mode(tmp_path: Path) -> None:
    task, model = _policy(tmp_path, "dpo")
    task.prepare_reference(model, [task.encode(ROW)], [], tmp_path, 4)
    batch = task.collate([task.encode(ROW)])
    model.train()
    first, second = task._reference(model, batch, 1), task._reference(model, batch, 1)
    assert first is not None and second is not None
    assert torch.equal(first[0], second[0]) and model.training
    assert _two_train_forwards_differ(model)


def test_rlhf_reference_leaves_lora_dropout_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # examples.rewards imports from the repository root
    rl = {"reward": "examples.rewards:vowel_share", "max_new_tokens": 8}
    task, model = _policy(tmp_path, "rlhf", rlhf=rl, data={"format": "prompt"})
    task.prepare_reference(model, [], [], tmp_path, 4)
    lora, base = _dropout_ps(model)
    assert lora == {0.5} and base == {0.0}
    assert _two_train_forwards_differ(model)


def test_rlhf_rollouts_follow_the_step_boundary(tmp_path: Path, monkeypatch) -> None:
    """updates_per_rollout 2: a step samples, the next reuses the same rollouts, whatever the
    number of micro-batches per step (here 3, with grad_accum left at 1)."""
    monkeypatch.chdir(ROOT)
    rl = {"reward": "examples.rewards:vowel_share", "updates_per_rollout": 2}
    cfg = config(
        tmp_path, task="rlhf", rlhf=rl, model={"name_or_path": str(tiny_causal_dir(tmp_path))}
    )
    task = build_task("rlhf", load_tokenizer(cfg.model), cfg)
    sampled: list[object] = []

    def fake_sample(model: object, batch: object) -> object:
        sampled.append(object())
        return sampled[-1]

    monkeypatch.setattr(task, "_sample", fake_sample)
    steps = []
    for step in range(5):
        task.begin_step(step)
        steps.append([task._rollout(None, {}) for _ in range(3)])  # type: ignore[arg-type]
    assert len(sampled) == 9  # steps 0, 2 and 4 sample; 1 and 3 reuse
    assert steps[1] == steps[0] and steps[3] == steps[2] and steps[2] != steps[0]
    assert steps[4] == sampled[6:9]


def test_removed_num_workers_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "old.yaml"
    p.write_text("task: classification\ntrain: {num_workers: 0}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(p)  # what every old run folder's config.yaml holds: silent
    p.write_text("task: classification\ntrain: {num_workers: 4}\n")
    with pytest.warns(UserWarning, match="train.num_workers is ignored"):
        cfg = load_config(p)
    assert "num_workers" not in cfg.train.model_dump()


def test_registry_is_read_without_importing_task_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lmtune.config, lmtune.tasks; "
        "print(sorted(m for m in sys.modules if m.startswith('lmtune.tasks.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['lmtune.tasks.spec']"
    assert set(TASKS) >= {"sft", "classification", "reward", "dpo", "orpo", "rlhf", "qa"}
