"""train.optimizer: each optimizer builds, steps, and survives a checkpoint round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.train import checkpoint as ckpt
from lmtune.train.optim import OPTIMIZERS, build_optimizer
from lmtune.train.schedule import param_groups
from lmtune.train.state import TrainState

NEEDS_BNB = ("adamw_8bit", "paged_adamw_8bit")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 128x64 = 8192 weights: above bitsandbytes' 4096-element floor for 8-bit states.
    return torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))


def _build(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = Config.model_validate({"train": {"optimizer": name, "lr": 1e-2}})
    groups = param_groups(model, cfg.train.weight_decay, cfg.train.lr, None, [], 1.0)
    return build_optimizer(cfg, groups, model)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 128, generator=g), torch.randint(0, 4, (16,), generator=g)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_default_is_fused_adamw() -> None:
    opt = _build("adamw", _model())
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_and_resumes_exactly(tmp_path: Path, name: str) -> None:
    if name in NEEDS_BNB:
        pytest.importorskip("bitsandbytes")
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = _build(name, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for seed in range(3):
        _step(model, opt, seed)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    if name == "adamw_8bit":
        states = [s for s in opt.state_dict()["state"].values()]
        quant = [v for s in states for v in s.get("__bnb_optimizer_quant_state__", {}).values()]
        assert any(t.dtype == torch.uint8 for t in quant), "expected 8-bit moments"
    # Through the real checkpoint files (optimizer state loaded back with weights_only=True).
    path = ckpt.save_checkpoint(tmp_path, 3, model, opt, sched, TrainState(step=3), keep_last=1)
    twin = _model()
    twin_opt = _build(name, twin)
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1.0)
    ckpt.load_checkpoint(path, twin, twin_opt, twin_sched)
    for seed in (3, 4):
        _step(model, opt, seed)
        _step(twin, twin_opt, seed)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_8bit_adamw_without_bitsandbytes_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(UserError, match=r"lmtune\[qlora\]"):
        _build("adamw_8bit", _model())


def test_unknown_optimizer_is_a_config_error() -> None:
    from lmtune.config import load_config

    with pytest.raises(UserError, match="train.optimizer"):
        load_config(None, ["train.optimizer=lion"])
