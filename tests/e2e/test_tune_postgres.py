"""Several `lmtune tune` workers share one study on a real PostgreSQL server (search.storage).

The test starts its own server (Debian's postgresql package: initdb + pg_ctl) in a temporary
folder on 127.0.0.1 and a free port, runs two workers, kills one in the middle of a trial and
starts it again: no trial runs twice, the dead worker's trial is run again once, and every
worker reports the same best trial and run folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runkit import sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server; yields its URL (trust auth, 127.0.0.1 only)."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) are absent: `make deps-system` installs them"
        )
    pytest.importorskip("psycopg2", reason="psycopg2 is absent: pip install 'lmtune[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="lmtune-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start postgres as a non-root user")
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o755)
    data, port = root / "data", _free_port()
    subprocess.run(
        [
            *prefix,
            str(pg / "initdb"),
            "-D",
            str(data),
            "-U",
            "lmtune",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-k {root} -h 127.0.0.1 -p {port} -F"
    subprocess.run(
        [
            *prefix,
            str(pg / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://lmtune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _worker(path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "lmtune", "tune", str(path), "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _started(log: Path) -> list[int]:
    """Trial numbers a worker started (its "trial N: key=value" lines)."""
    return [
        int(n) for n in re.findall(r"^trial (\d+)(?: \(re-run of \d+\))?:", log.read_text(), re.M)
    ]


@pytest.mark.multiproc
@pytest.mark.timeout(900)  # about a minute on two idle cores; a loaded machine takes longer
def test_two_workers_share_a_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    import optuna

    model = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(32))
    out = tmp_path / "search"
    cfg = {
        "run": {"name": "shared-search", "output_dir": str(out), "seed": 3},
        "model": {"name_or_path": str(model), "max_length": 48},
        "adapter": {"type": "full"},
        "data": {
            "train": str(data),
            "split": {"eval": 0.25},
            "clean": {"pii": False, "secrets": False},
        },
        "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "eval_before": False},
        "search": {
            "sampler": "random",
            "n_trials": 3,
            "metric": "eval_loss",
            "direction": "minimize",
            "pruner": {"type": "none"},
            "storage": postgres_url,
            "heartbeat_seconds": 3,
            "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    first, second = _worker(path, logs[0]), _worker(path, logs[1])
    # Kill the first worker in the middle of its first trial (a machine that died).
    deadline = time.time() + 240
    while time.time() < deadline and not _started(logs[0]) and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, logs[0].read_text()[-2000:]
    time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed = _started(logs[0])[-1]
    third = _worker(path, logs[2])  # the machine back: a new worker joins the same study
    assert second.wait(timeout=800) == 0, logs[1].read_text()[-3000:]
    assert third.wait(timeout=800) == 0, logs[2].read_text()[-3000:]

    from lmtune.search.shared import with_driver

    study = optuna.load_study(study_name="shared-search", storage=with_driver(postgres_url))
    trials = {t.number: t for t in study.trials}
    assert trials[killed].state.name == "FAIL"
    reruns = [t for t in study.trials if t.user_attrs.get("rerun_of") == killed]
    assert len(reruns) == 1 and reruns[0].state.name == "COMPLETE"  # queued again once
    assert reruns[0].params == trials[killed].params
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 3 <= len(complete) <= 4  # the budget; a worker inside a trial may finish one more
    # No trial ran twice: each trial was started by one worker, each in its own folder.
    started = [n for log in logs for n in _started(log)]
    assert sorted(started) == sorted(trials) and len(set(started)) == len(started)
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == len(study.trials)
    # Every worker reports the same best trial (the study's) and its run folder.
    best = study.best_trial
    for log in logs[1:]:
        line = [x for x in log.read_text().splitlines() if x.startswith("best: trial")]
        assert line and line[-1].startswith(f"best: trial {best.number},"), log.read_text()[-2000:]
    summary = json.loads((out / "search.json").read_text())
    assert summary["best"]["number"] == best.number
    assert summary["best"]["run_dir"] == best.user_attrs["run_dir"]
    assert "***" not in summary["study"] and summary["study"].startswith("postgresql://")
