"""`lmtune tune` end to end on a tiny BERT classifier: pruning, results, resume, killed trials."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from lmtune.config import load_config
from lmtune.search.hpo import STUDY_NAME, run_search
from lmtune.search.space import get_dotted
from runkit import config, sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_median_pruner_stops_the_worse_trials_and_leaves_their_folders_consistent(
    tmp_path: Path,
) -> None:
    model = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    # lr 1e-6 leaves the model at chance (eval loss ln 2); lr 5e-3 overshoots in the first
    # steps, so its eval loss at step 4 is clearly worse than the median of earlier trials.
    cfg = config(
        tmp_path,
        model={"name_or_path": str(model)},
        data={"train": str(data)},
        adapter={"type": "full"},
        train={"epochs": 1, "eval_every": 4, "eval_before": False},
        search={
            "sampler": "grid",
            "seed": 0,
            "n_trials": 4,
            "metric": "eval_loss",
            "direction": "minimize",
            "pruner": {"type": "median", "n_startup_trials": 1},
            "space": {
                "train.lr": {"type": "categorical", "choices": [5e-3, 1e-6]},
                "train.warmup_ratio": {"type": "float", "values": [0.0, 0.1]},
            },
        },
    )
    summary = run_search(cfg, quiet=True)
    out = tmp_path / "run"
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 4 and summary["states"].get("PRUNED", 0) >= 1
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert {r["params"]["train.lr"] for r in pruned} == {5e-3}
    assert {r["params"]["train.lr"] for r in rows if r["state"] == "COMPLETE"} == {1e-6}
    for r in pruned:
        run = Path(r["run_dir"])
        events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        # The evaluation that decided it is logged, then why the run ended; its checkpoint is
        # on disk (resumable) and no final model pretends the run finished.
        assert events[-2]["event"] == "eval" and events[-2]["step"] == r["pruned_at_step"]
        assert events[-1] == {
            **events[-1],
            "event": "stopped",
            "step": r["pruned_at_step"],
            "reason": "TrialPruned",
        }
        assert (run / "checkpoints" / f"step-{r['pruned_at_step']:07d}").is_dir()
        assert not (run / "model").exists() and not (run / "summary.json").exists()
        assert json.loads((run / "trial.json").read_text())["state"] == "PRUNED"
        assert r["value"] == events[-2]["eval_loss"]
    best = summary["best"]
    assert best["value"] == min(r["value"] for r in rows if r["state"] == "COMPLETE")
    assert (out / "plots" / "history.png").stat().st_size > 1000


def _lmtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmtune", "tune", *args, "--quiet"]


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """The console-script entry point in this process (a new process costs seconds of imports)."""
    from lmtune.cli import main

    monkeypatch.setattr(sys, "argv", ["lmtune", "tune", *args, "--quiet"])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_tune_cli_resumes_without_redoing_trials_and_reruns_a_killed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(64))
    out = tmp_path / "search"
    cfg = {
        "run": {"name": "tiny-search", "output_dir": str(out), "seed": 3},
        "model": {"name_or_path": str(model), "max_length": 64},
        "adapter": {"type": "full"},
        "data": {
            "train": str(data),
            "split": {"eval": 0.25},
            "clean": {"pii": False, "secrets": False},
        },
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "eval_before": False},
        "search": {
            "sampler": "tpe",
            "n_startup_trials": 2,
            "n_trials": 2,
            "metric": "eval_loss",
            "direction": "minimize",
            "pruner": {"type": "none"},
            "space": {
                "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
            },
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    assert _main(monkeypatch, str(path)) == 0
    with (out / "trials.csv").open() as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["COMPLETE", "COMPLETE"]
    kept = (out / "trials" / "trial_0000" / "metrics.jsonl").read_text()

    capsys.readouterr()
    assert _main(monkeypatch, str(path)) == 2  # the study exists: continuing needs --resume
    assert "--resume" in capsys.readouterr().err

    # Continue to 4 trials in a real process, and kill it while its second new trial (3) trains.
    proc = subprocess.Popen(
        _lmtune(str(path), "search.n_trials=4", "--resume"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = out / "trials" / "trial_0003" / "config.yaml"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not started.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "trials" / "trial_0002" / "trial.json").exists()
    assert not (out / "trials" / "trial_0003" / "trial.json").exists()

    assert _main(monkeypatch, str(path), "search.n_trials=4", "--resume") == 0
    printed = capsys.readouterr().out
    assert "trial 3 was interrupted" in printed
    # Finished trials were not redone: trial 0's log is untouched, only 0002..0004 are new.
    assert (out / "trials" / "trial_0000" / "metrics.jsonl").read_text() == kept
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial_000{i}" for i in range(5)]
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert (
        study.trials[4].params == study.trials[3].params
        and study.trials[4].user_attrs["rerun_of"] == 3
    )

    # Results: 5 rows (the killed trial listed as failed), the best config ready to train.
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == states
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: float(r["value"]))
    assert float(best["value"]) == study.best_value
    summary = json.loads((out / "search.json").read_text())
    assert summary["best"]["number"] == int(best["number"]) == study.best_trial.number
    best_cfg = load_config(out / "best.yaml")
    best_data = best_cfg.model_dump(mode="json")
    for key in ("train.lr", "train.warmup_ratio"):
        assert get_dotted(best_data, key) == float(best[key]) == study.best_params[key]
    assert best_cfg.run.output_dir == str(out / "best_run")
    trained = load_config(Path(best["run_dir"]) / "config.yaml").model_dump(mode="json")
    assert {k: v for k, v in trained.items() if k != "run"} == {
        k: v for k, v in best_data.items() if k != "run"
    }
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2 and "trial_0004" in report
    assert (out / "plots" / "history.png").is_file() and (
        out / "plots" / "importance.png"
    ).is_file()
    assert "best: trial" in printed
