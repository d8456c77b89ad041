"""What a person reads while a run trains (train/logging.py) and the run folder checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.errors import UserError
from lmtune.train.logging import MetricsLog, Progress, auto_log_every, eval_line, metrics_text
from lmtune.train.output_dir import check_fresh, require_dir


def test_plain_lines_for_each_logged_step_and_one_compact_line_per_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    progress = Progress(40, enabled=True, plain=True)
    progress.start(0)
    for step in (10, 20):
        progress.update(step, loss=0.5, lr=1e-4, tokens=step * 100, elapsed=step / 10)
        log.write(
            {
                "event": "train",
                "step": step,
                "epoch": 0 if step == 10 else 1,
                "loss": 0.69314,
                "lr": 2e-4,
                "tokens": step * 100,
                "elapsed_s": step / 10,
            }
        )
    metrics = {"eval_loss": 0.5, "accuracy": 0.75, "eval_examples": 4.0, "eval_tokens": 96.0}
    log.write({"event": "eval", "step": 20, "epoch": 1, **metrics})
    progress.note("step 20: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    progress.note("early stopping at step 20")
    progress.stop()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 10/40 | epoch 1 | loss 0.6931 | lr 2.00e-04 | 1,000 tok/s")
    assert "elapsed 0:01" in lines[0] and "eta " in lines[0]
    assert lines[1].startswith("step 20/40 | epoch 2 |")
    # The evaluation once, on one line, counts as integers (the loop's own wording is dropped).
    assert lines[2] == (
        "eval step 20/40 | eval_loss 0.5000 accuracy 0.7500 eval_examples 4 eval_tokens 96"
    )
    assert lines[3] == "early stopping at step 20"
    assert len(lines) == 4
    # Once stopped, a later log (another run in this process) prints nothing.
    log.write({"event": "train", "step": 30, "loss": 1.0})
    assert capsys.readouterr().out == ""


def test_counts_are_integers_and_short_runs_log_often() -> None:
    assert metrics_text({"eval_pairs": 12.0, "reward_accuracy": 0.5}) == (
        "reward_accuracy 0.5000 eval_pairs 12"
    )
    assert eval_line({"event": "eval", "step": 3, "rows": 5.0}, 9) == "eval step 3/9 | rows 5"
    assert [auto_log_every(n, 10) for n in (5, 19, 40, 100, 200, 5000)] == [1, 1, 2, 5, 10, 10]
    assert auto_log_every(5000, 50) == 50 and auto_log_every(100, 2) == 2


def test_run_folder_that_is_a_file_and_a_rerun_over_a_previous_run(tmp_path: Path) -> None:
    afile = tmp_path / "taken"
    afile.write_text("x")
    with pytest.raises(UserError, match=f"run.output_dir {afile} is a file"):
        require_dir(afile)
    with pytest.raises(UserError, match=f"lies inside {afile}, which is a file"):
        require_dir(afile / "run")
    run = tmp_path / "run"
    check_fresh(run, resume=False, overwrite=False)  # new folder: fine
    (run / "data").mkdir()
    check_fresh(run, resume=False, overwrite=False)  # prepared data only: fine
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="previous run .*--resume.*--overwrite"):
        check_fresh(run, resume=False, overwrite=False)
    check_fresh(run, resume=True, overwrite=False)
    check_fresh(run, resume=False, overwrite=True)
    assert not (run / "checkpoints").exists() and not (run / "summary.json").exists()
    assert (run / "data").is_dir()  # only the previous run's outputs go
