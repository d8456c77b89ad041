"""runtime/: strategy choice, block discovery, launch commands, eval shares, checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmtune.errors import UserError
from lmtune.runtime.launch import LaunchPlan, strip_launch_options, torchrun_command
from lmtune.runtime.sharded_eval import row_share
from lmtune.runtime.strategy import Engine, resolve_strategy, transformer_blocks
from lmtune.train.checkpoint import list_checkpoints
from lmtune.train.sharded_ckpt import load_sharded, save_sharded
from tiny import make_bert_tokenizer, make_causal, make_encoder_classifier, make_tokenizer


def test_auto_is_none_for_one_process_and_ddp_for_several() -> None:
    assert resolve_strategy("auto", 1) == "none"
    assert resolve_strategy("auto", 4) == "ddp"
    assert resolve_strategy("fsdp", 2) == "fsdp"
    with pytest.raises(UserError, match="train.distributed.strategy"):
        resolve_strategy("none", 2)


def test_engines_scale_the_loss_back_to_a_sum() -> None:
    """DDP and FSDP average gradients over processes; the loop's loss is one share of a sum."""
    model = torch.nn.Linear(2, 1)
    assert Engine("none", model, 1).loss_scale == 1.0
    assert Engine("ddp", model, 4, torch.nn.Identity()).loss_scale == 4.0
    assert Engine("fsdp", model, 2, torch.nn.Identity()).loss_scale == 2.0


def test_blocks_are_the_decoder_and_encoder_layers() -> None:
    llama = make_causal("llama", make_tokenizer())
    assert transformer_blocks(llama) == list(llama.model.layers)
    bert = make_encoder_classifier("bert", 2, make_bert_tokenizer())
    assert transformer_blocks(bert) == list(bert.bert.encoder.layer)


def test_launch_command_for_one_machine_and_for_several() -> None:
    argv = ["train", "c.yaml", "--nproc", "2", "--nnodes=2", "--node-rank", "1", "--quiet"]
    assert strip_launch_options(argv) == ["train", "c.yaml", "--quiet"]
    one = torchrun_command(LaunchPlan(nproc=2), argv)
    assert "--standalone" in one and "--nproc-per-node=2" in one
    assert one[-3:] == ["train", "c.yaml", "--quiet"]
    plan = LaunchPlan(nproc=1, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    many = torchrun_command(plan, argv)
    assert "--standalone" not in many
    for opt in ("--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400"):
        assert opt in many


@pytest.mark.parametrize(
    ("plan", "fix"),
    [
        (LaunchPlan(nnodes=2), "--master-addr"),
        (LaunchPlan(nnodes=2, node_rank=2, master_addr="h"), "--node-rank"),
        (LaunchPlan(master_port=70000), "--master-port"),
    ],
)
def test_inconsistent_launch_options_are_user_errors(plan: LaunchPlan, fix: str) -> None:
    with pytest.raises(UserError, match=fix):
        plan.check()


def test_eval_shares_cover_every_row_once_in_order() -> None:
    for n in (0, 1, 7, 8):
        for world in (1, 2, 3):
            shares = [row_share(n, r, world) for r in range(world)]
            rows = [i for a, b in shares for i in range(a, b)]
            assert rows == list(range(n))
            assert max(b - a for a, b in shares) - min(b - a for a, b in shares) <= 1


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].bias.requires_grad_(False)  # frozen: not in the checkpoint
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(2):
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_sharded_checkpoint_round_trip_and_half_written_ones_are_ignored(tmp_path: Path) -> None:
    model, opt, sched = _trained(0)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-0000009").mkdir(parents=True)  # what a kill mid-write leaves
    save_sharded(root, 2, model, opt, sched, '{"step": 2}', keep_last=1, rank=0)
    assert [p.name for p in list_checkpoints(root)] == ["step-0000002"]
    assert not list(root.glob(".tmp-*"))
    files = {p.name for p in (root / "step-0000002").iterdir()}
    assert {".metadata", "rng-0.pt", "state.json", "scheduler.json"} <= files
    assert not any(p.suffix in (".pt", ".pkl") and p.name != "rng-0.pt" for p in root.rglob("*"))
    other, opt2, sched2 = _trained(1)
    state = load_sharded(root / "step-0000002", other, opt2, sched2, rank=0)
    assert state == {"step": 2}
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        if a.requires_grad:
            assert torch.equal(a, b)
    assert sched2.state_dict()["last_epoch"] == 2
    s1 = opt.state_dict()["state"]
    s2 = opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    assert json.loads((root / "step-0000002" / "optimizer_groups.json").read_text())[0]["lr"]
