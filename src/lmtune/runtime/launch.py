"""Launching the worker processes of one run through torch.distributed.run (torchrun).

`lmtune train CONFIG --nproc 2` on one machine, or on each of N machines
`lmtune train CONFIG --nnodes N --node-rank R --master-addr HOST --master-port P --nproc K`,
re-runs the same command under torchrun with these options removed. The equivalents:

    torchrun --nnodes N --node-rank R --master-addr HOST --master-port P \\
        --nproc-per-node K -m lmtune train CONFIG
    accelerate launch --num_machines N --machine_rank R --main_process_ip HOST \\
        --main_process_port P --num_processes N*K -m lmtune train CONFIG
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from lmtune.errors import UserError

# Options `lmtune train` consumes itself; the workers must not see them again.
_LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@dataclass(frozen=True)
class LaunchPlan:
    """Where this machine's processes sit in the job."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    def wanted(self) -> bool:
        """Whether the command must be re-run under torchrun (more than one process)."""
        return self.nproc > 1 or self.nnodes > 1

    def check(self) -> None:
        """UserError naming the option and the fix when the plan is inconsistent."""
        if self.nproc < 1 or self.nnodes < 1:
            raise UserError("--nproc and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(
                f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1} (--nnodes "
                f"{self.nnodes}); give each machine its own rank, 0 on the one at --master-addr"
            )
        if self.nnodes > 1 and not self.master_addr:
            raise UserError(
                f"--nnodes {self.nnodes} needs --master-addr: the address of the machine with "
                "--node-rank 0, which every machine can reach"
            )
        if not 0 < self.master_port < 65536:
            raise UserError(f"--master-port {self.master_port} is not a port (1..65535)")


def strip_launch_options(argv: list[str]) -> list[str]:
    """argv without the launch options (both `--opt VALUE` and `--opt=VALUE`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in _LAUNCH_OPTIONS:
            skip = True
            continue
        if a.startswith(tuple(f"{o}=" for o in _LAUNCH_OPTIONS)):
            continue
        out.append(a)
    return out


def torchrun_command(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """The torch.distributed.run command line that runs `lmtune ARGV` as `plan` says."""
    if plan.nnodes == 1 and plan.master_addr is None:
        where = ["--standalone"]  # a free local port, no rendezvous setup
    else:
        where = [
            f"--nnodes={plan.nnodes}",
            f"--node-rank={plan.node_rank}",
            f"--master-addr={plan.master_addr or '127.0.0.1'}",
            f"--master-port={plan.master_port}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={plan.nproc}",
        "-m",
        "lmtune",
        *strip_launch_options(argv),
    ]


def launch(plan: LaunchPlan, argv: list[str]) -> int:
    """Run this machine's share of the job under torchrun; returns its exit code."""
    plan.check()
    return subprocess.call(torchrun_command(plan, argv))
