"""What the UI starts: `lmtune` subprocesses for train, resume, eval and export.

A launched run is a detached `lmtune train` process (its own session), so it outlives a UI
restart; the UI records its pid, command and log under ROOT/.lmtune-ui/ and a small waiter
writes the exit code there when it ends. Configs are validated exactly as the CLI does
(lmtune.config.load_config) before anything starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import UserError
from lmtune.ui.runs import UI_DIR, launch_record, safe_path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def validate_yaml(text: str, overrides: list[str] | None = None) -> tuple[Any, list[str]]:
    """(Config or None, problems): the CLI's own validation of a pasted YAML config.

    Every problem is returned at once, one per line, each with its key path.
    """
    from lmtune.config import load_config

    with tempfile.TemporaryDirectory(prefix="lmtune-ui-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path, overrides or [])
        except UserError as exc:
            lines = str(exc).replace(str(path), "config").splitlines()
            return None, [line.strip().lstrip("- ") for line in lines if line.strip()]
    return cfg, []


def plan_lines(text: str, overrides: list[str], gpus: int = 1) -> list[str]:
    """`lmtune plan`'s memory table for a pasted config (validated first, as the CLI does)."""
    import torch

    from lmtune.runtime.plan import PlanInputs, device_budget, estimate, report_lines
    from lmtune.runtime.plan_model import model_shape

    cfg, problems = validate_yaml(text, overrides)
    if cfg is None:
        raise UserError("\n".join(problems))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = model_shape(cfg)
    plan = estimate(shape, PlanInputs.from_config(cfg, nproc=gpus, device=device))
    return report_lines(cfg, shape, plan, device_budget(device, gpus))


def shipped_configs(base: Path) -> dict[str, str]:
    """name -> YAML text of the configs/ folder beside where the UI was started."""
    folder = base / "configs"
    if not folder.is_dir():
        return {}
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.yaml"))}


def _spawn(root: Path, name: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Start `lmtune ARGS` detached, logging to ROOT/.lmtune-ui/NAME.log; record its pid."""
    records = root / UI_DIR
    records.mkdir(parents=True, exist_ok=True)
    log_path = records / f"{name}.log"
    (records / f"{name}.exit").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "lmtune", *args]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own session: a UI restart or Ctrl-C does not end it
        )
    record = {"pid": proc.pid, "command": cmd, "log": str(log_path), "cwd": str(cwd)}
    (records / f"{name}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")

    def wait() -> None:  # the UI process is its parent: reap it and keep the exit code
        code = proc.wait()
        (records / f"{name}.exit").write_text(json.dumps(code), encoding="utf-8")

    threading.Thread(target=wait, daemon=True, name=f"lmtune-ui-wait-{name}").start()
    return record


def launch_run(root: Path, text: str, overrides: list[str], cwd: Path) -> dict[str, Any]:
    """Validate a config and start it as a run under ROOT; its name is run.name (made unique)."""
    cfg, problems = validate_yaml(text, overrides)
    if cfg is None:
        raise UserError("\n".join(problems))
    base = cfg.run.name if NAME_RE.match(cfg.run.name or "") else "run"
    name, i = base, 1
    while (root / name).exists() or launch_record(root, name):
        i += 1
        name = f"{base}-{i}"
    run_dir = root.resolve() / name
    configs = root / UI_DIR / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(text) or {}
    config_file = configs / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    args = ["train", str(config_file), *overrides, f"run.output_dir={run_dir}", f"run.name={name}"]
    record = _spawn(root, name, args, cwd)
    return {"name": name, "run_dir": str(run_dir), **record}


def resume_run(root: Path, name: str, cwd: Path) -> dict[str, Any]:
    """Start `lmtune train RUN/config.yaml --resume` for a stopped or interrupted run."""
    run_dir = safe_path(root, name)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{name} is not a run folder (no config.yaml)")
    _refuse_running(root, name)
    args = ["train", str(run_dir / "config.yaml"), f"run.output_dir={run_dir}", "--resume"]
    return _spawn(root, name, args, cwd)


def start_command(root: Path, name: str, command: str, extra: list[str], cwd: Path) -> dict:
    """`lmtune eval` (on a file) or `lmtune export` of a run, logged like a run."""
    run_dir = safe_path(root, name)
    model = run_dir / "model"
    if not model.is_dir():
        raise UserError(f"{name} has no model/ folder yet (it has not finished training)")
    if command == "eval":
        data = safe_path(root, extra[0]) if extra else None
        if data is None or not data.is_file():
            raise UserError("eval needs a data file under the UI root")
        args = ["eval", str(model), "--data", str(data)]
    elif command == "export":
        args = ["export", str(model), str(run_dir / "export")]
    else:
        raise UserError(f"unknown command {command!r}")
    return _spawn(root, f"{name}.{command}", args, cwd)


def _refuse_running(root: Path, name: str) -> None:
    from lmtune.ui.runs import _alive

    record = launch_record(root, name) or {}
    if isinstance(record.get("pid"), int) and _alive(record["pid"]):
        raise UserError(f"{name} is still running (pid {record['pid']})")


def stop_run(root: Path, name: str) -> int:
    """Ask a UI-launched run to stop gracefully (SIGINT, like Ctrl-C); returns its pid."""
    from lmtune.ui.runs import _alive

    record = launch_record(root, name) or {}
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        raise UserError(f"{name} is not running from this UI (nothing to stop)")
    os.kill(pid, signal.SIGINT)
    return pid
