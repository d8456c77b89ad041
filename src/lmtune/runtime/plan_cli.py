"""`lmtune plan CONFIG`: the memory plan of a run, per process, before anything is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plan_command(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.batch_size=8")
    ] = None,
    gpus: Annotated[
        int, typer.Option("--gpus", min=1, help="Processes (one per GPU) to plan for.")
    ] = 1,
    gpu_memory: Annotated[
        float | None,
        typer.Option(
            "--gpu-memory",
            min=0.01,
            help="Memory of one device in GiB (default: this machine's GPU, else its free RAM "
            "shared by the processes).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cpu or cuda (default: cuda when --gpu-memory is given "
            "or a GPU is present, else cpu).",
        ),
    ] = None,
) -> None:
    """Weights, gradients, optimizer states, activations, logits and buffers per process;
    whether it fits, the largest micro-batch and length that do, and what makes it fit."""
    import torch

    from lmtune.config import load_config
    from lmtune.runtime.plan import PlanInputs, device_budget, estimate, report_lines
    from lmtune.runtime.plan_model import model_shape

    cfg = load_config(config, overrides or [])
    if device is None:
        device = "cuda" if gpu_memory is not None or torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, not {device}")
    if device == "cuda" and gpu_memory is None and not torch.cuda.is_available():
        from lmtune.errors import UserError

        raise UserError("no GPU here: give the device's memory with --gpu-memory GiB")
    shape = model_shape(cfg)
    plan = estimate(shape, PlanInputs.from_config(cfg, nproc=gpus, device=device))
    budget = device_budget(device, gpus, gpu_memory)
    for line in report_lines(cfg, shape, plan, budget):
        print(line)
