"""train.gradient_checkpointing: the same loss and gradients, fewer bytes kept for backward."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lmtune.config import AdapterConfig
from lmtune.models.adapters import apply_adapter
from lmtune.models.lm_head import target_logps
from lmtune.runtime.memory import enable_activation_checkpointing
from lmtune.train.run import run_training
from runkit import config, folder_tensors, instruction_rows, tiny_causal_dir, write_jsonl
from tiny import make_causal, make_tokenizer


def _saved_bytes_and_grads(
    model: torch.nn.Module, chunked: bool
) -> tuple[float, int, dict[str, torch.Tensor]]:
    """(loss, bytes of activations saved for backward, gradients) of one training step.

    Saved bytes are counted once per storage, without the parameters (they are kept anyway):
    what checkpointing is meant to save. Inside a checkpointed block torch's own hooks take
    the tensors (and drop them), so this outer hook sees only what is really kept.
    """
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (4, 96))
    labels = ids.clone()
    labels[:, :16] = -100  # a prompt part without loss, as in SFT
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    model.train()
    torch.manual_seed(1)  # LoRA dropout draws the same masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if chunked:  # the SFT path: decoder body, then the LM head in chunks
            logp, _, _, _ = target_logps(model, {"input_ids": ids}, labels)
            loss = -logp.mean()
        else:  # the model's own forward (logits for every position)
            loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), sum(seen.values()), grads


@pytest.mark.parametrize(("adapter", "chunked"), [("full", True), ("lora", True), ("lora", False)])
def test_same_loss_and_gradients_with_fewer_saved_bytes(adapter: str, chunked: bool) -> None:
    base = make_causal("llama", make_tokenizer())
    if adapter == "lora":
        base = apply_adapter(base, AdapterConfig(type="lora", r=4, alpha=8, dropout=0.1), "sft")
    plain = copy.deepcopy(base)
    enable_activation_checkpointing(base)
    loss_a, bytes_a, grads_a = _saved_bytes_and_grads(plain, chunked)
    loss_b, bytes_b, grads_b = _saved_bytes_and_grads(base, chunked)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    worst = max(float((grads_a[k] - grads_b[k]).abs().max()) for k in grads_a)
    assert worst <= 1e-5, worst
    print(f"{adapter} chunked={chunked}: saved for backward {bytes_a} -> {bytes_b} bytes")
    assert bytes_b < 0.7 * bytes_a, (bytes_a, bytes_b)


def test_training_with_checkpointing_reaches_the_same_weights(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(32))

    def run(name: str, on: bool) -> dict[str, torch.Tensor]:
        cfg = config(
            tmp_path / name,
            task="sft",
            model={"name_or_path": str(model_dir)},
            adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
            data={"train": str(data), "format": "instruction", "template": "alpaca"},
            train={"max_steps": 3, "eval_before": False, "gradient_checkpointing": on},
        )
        return folder_tensors(Path(run_training(cfg, quiet=True)["model_dir"]))

    a, b = run("plain", False), run("checkpointed", True)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
