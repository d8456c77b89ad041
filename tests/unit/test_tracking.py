"""Experiment trackers (train/tracking.py): what TensorBoard and MLflow hold, read back with
their own readers, equals what metrics.jsonl holds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.train.logging import MetricsLog
from lmtune.train.tracking import (
    MLflowTracker,
    TensorBoardTracker,
    Trackers,
    config_params,
    default_mlflow_uri,
    event_metrics,
    open_trackers,
    require_packages,
    summary_metrics,
)

# What the loop writes: train logs (with an rlhf-style extra metric) and evaluations.
EVENTS = [
    {
        "event": "train",
        "step": 1,
        "epoch": 0,
        "loss": 0.75,
        "lr": 1e-3,
        "tokens": 120,
        "elapsed_s": 0.25,
    },
    {
        "event": "train",
        "step": 2,
        "epoch": 0,
        "loss": 0.625,
        "lr": 5e-4,
        "tokens": 240,
        "elapsed_s": 0.5,
        "penalty": 0.125,
    },
    {"event": "eval", "step": 2, "epoch": 0, "eval_loss": 0.5, "accuracy": 0.875, "macro_f1": 0.8},
    {"event": "stopped", "step": 2, "reason": "TrialPruned", "detail": "pruned"},
    {
        "event": "train",
        "step": 3,
        "epoch": 1,
        "loss": 0.375,
        "lr": 0.0,
        "tokens": 360,
        "elapsed_s": 0.75,
    },
    {"event": "eval", "step": 3, "epoch": 1, "eval_loss": 0.25, "accuracy": 1.0, "macro_f1": 1.0},
]
# The same numbers by tag, written out by hand: tag -> [(step, value)].
EXPECTED = {
    "train/loss": [(1, 0.75), (2, 0.625), (3, 0.375)],
    "train/lr": [(1, 1e-3), (2, 5e-4), (3, 0.0)],
    "train/tokens": [(1, 120.0), (2, 240.0), (3, 360.0)],
    "train/elapsed_s": [(1, 0.25), (2, 0.5), (3, 0.75)],
    "train/penalty": [(2, 0.125)],
    "eval/loss": [(2, 0.5), (3, 0.25)],
    "eval/accuracy": [(2, 0.875), (3, 1.0)],
    "eval/macro_f1": [(2, 0.8), (3, 1.0)],
}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store: creating one runs ~70 schema migrations (seconds on a busy
    disk), so each test copies this one into the folder where MLflow would create it."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(tracking_uri=default_mlflow_uri(folder)).search_experiments()
    return folder / "mlflow.db"


def _write_events(trackers: Trackers, path: Path) -> list[dict]:
    """Write EVENTS through MetricsLog (the loop's path) and return what metrics.jsonl holds."""
    log = MetricsLog(path, forward=trackers.log_event)
    for event in EVENTS:
        log.write(event)
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_series(
    got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]
) -> None:
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        # TensorBoard stores float32.
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_event_metrics_maps_train_and_eval_events_only() -> None:
    assert event_metrics(EVENTS[1]) == (
        2,
        {
            "train/loss": 0.625,
            "train/lr": 5e-4,
            "train/tokens": 240.0,
            "train/elapsed_s": 0.5,
            "train/penalty": 0.125,
        },
    )
    assert event_metrics(EVENTS[2]) == (
        2,
        {"eval/loss": 0.5, "eval/accuracy": 0.875, "eval/macro_f1": 0.8},
    )
    assert event_metrics(EVENTS[3]) is None  # "stopped" carries no metrics
    assert event_metrics({"event": "eval", "step": 4, "flag": True, "note": "x"}) == (4, {})


def test_summary_and_config_flattening() -> None:
    summary = {
        "train_steps": 7,
        "final_train_loss": 0.5,
        "stopped_early": False,
        "best_checkpoint": "x",
        "test": {"accuracy": 0.75},
        "eval_before": {"eval": {"accuracy": 0.5}},
        "baselines": None,
    }
    assert summary_metrics(summary) == {
        "summary/train_steps": 7.0,
        "summary/final_train_loss": 0.5,
        "summary/test/accuracy": 0.75,
        "summary/eval_before/eval/accuracy": 0.5,
    }
    cfg = Config.model_validate({"train": {"lr": 1e-4}, "data": {"labels": ["neg", "pos"]}})
    params = config_params(cfg)
    assert params["train.lr"] == "0.0001" and params["data.labels"] == '["neg", "pos"]'
    assert params["run.name"] == "run" and params["data.train"] == "null"
    assert params["data.columns"] == "{}" and params["train.early_stopping.metric"] == "eval_loss"
    assert params["tracking.mlflow"] == "false"


def test_off_by_default_is_an_empty_fan_out(tmp_path: Path) -> None:
    trackers = open_trackers(Config(), tmp_path)
    assert not trackers
    assert len(_write_events(trackers, tmp_path / "metrics.jsonl")) == len(EVENTS)
    trackers.close()
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.jsonl"]


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    with Trackers({"tensorboard": TensorBoardTracker(log_dir, purge_step=1)}) as trackers:
        trackers.log_params({"train.lr": "0.001"})
        written = _write_events(trackers, tmp_path / "metrics.jsonl")
    assert [{k: v for k, v in e.items() if k != "time"} for e in written] == EVENTS
    _assert_series(_tb_scalars(log_dir), EXPECTED)


def test_tensorboard_resume_replaces_the_steps_after_the_checkpoint(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    first = TensorBoardTracker(log_dir, purge_step=1)
    for step in (1, 2, 3, 4):  # killed after step 4; the last checkpoint was step 2
        first.log_metrics(step, {"train/loss": float(step)})
    first.close()
    resumed = TensorBoardTracker(log_dir, purge_step=3)
    for step in (3, 4, 5):
        resumed.log_metrics(step, {"train/loss": 10.0 * step})
    resumed.close()
    assert _tb_scalars(log_dir) == {
        "train/loss": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    }
    # A fresh run into the same folder (purge from step 1) hides everything before it.
    rerun = TensorBoardTracker(log_dir, purge_step=1)
    rerun.log_metrics(1, {"train/loss": 7.0})
    rerun.close()
    assert _tb_scalars(log_dir) == {"train/loss": [(1, 7.0)]}


def test_mlflow_params_metrics_and_artifacts_read_back(tmp_path: Path, empty_store: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_store, run_dir / "mlflow.db")
    uri = default_mlflow_uri(run_dir)
    long_value = "x" * (MAX_PARAM_VAL_LENGTH + 50)
    params = {
        "train.lr": "0.001",
        "data.columns.text (review)": "body",
        "data.labels": long_value,
        **{f"many.p{i}": str(i) for i in range(150)},
    }  # over one batch of parameters
    (run_dir / "report.html").write_text("<html>report</html>")
    tracker = MLflowTracker(uri, "exp", "my-run", run_dir, resume=False)
    with Trackers({"mlflow": tracker}) as trackers:
        trackers.log_params(params)
        _write_events(trackers, run_dir / "metrics.jsonl")
        trackers.log_summary(
            {"train_steps": 3, "final_train_loss": 0.375, "test": {"accuracy": 0.5}}, run_dir
        )

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "my-run"
    assert run.data.tags["lmtune.run_dir"] == str(run_dir.resolve())
    got = run.data.params
    assert len(got) == len(params)
    assert got["train.lr"] == "0.001" and got["many.p149"] == "149"
    assert got["data.columns.text _review_"] == "body"  # characters MLflow refuses become _
    assert got["data.labels"] == "x" * MAX_PARAM_VAL_LENGTH
    history = {
        tag: [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
        ]
        for tag in EXPECTED
    }
    _assert_series(history, EXPECTED)
    assert run.data.metrics["summary/train_steps"] == 3.0
    assert run.data.metrics["summary/test/accuracy"] == 0.5
    assert [
        m.step for m in client.get_metric_history(run.info.run_id, "summary/final_train_loss")
    ] == [3]
    # Only the files that exist; artifacts sit beside the store, inside the run folder.
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.html"]
    assert (run_dir / "mlartifacts" / run.info.run_id / "artifacts" / "report.html").is_file()


def test_mlflow_resume_continues_the_same_run(tmp_path: Path, empty_store: Path) -> None:
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    (tmp_path / "shared").mkdir()
    shutil.copy(empty_store, tmp_path / "shared" / "mlflow.db")
    uri = default_mlflow_uri(tmp_path / "shared")
    first_tracker = MLflowTracker(uri, "exp", "a", run_dir, resume=False)
    first = Trackers({"mlflow": first_tracker})
    first.log_params({"train.lr": "0.001"})
    first.log_metrics(1, {"train/loss": 1.0})
    first.close("KILLED")
    other = MLflowTracker(
        uri, "exp", "b", tmp_path / "other", resume=False
    )  # another folder, same store
    other.close()
    resumed_tracker = MLflowTracker(uri, "exp", "a", run_dir, resume=True)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(resumed_tracker.run_id).info.status == "RUNNING"
    with Trackers({"mlflow": resumed_tracker}) as resumed:
        resumed.log_params({"train.lr": "0.5", "train.epochs": "2"})  # parameters never change
        resumed.log_metrics(2, {"train/loss": 0.5})
    run = client.get_run(resumed_tracker.run_id)
    assert resumed_tracker.run_id == first_tracker.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "2"}
    assert [
        (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")
    ] == [(1, 1.0), (2, 0.5)]
    # Without --resume a new run starts.
    fresh = MLflowTracker(uri, "exp", "a", run_dir, resume=False)
    fresh.close()
    assert fresh.run_id != resumed_tracker.run_id


def test_failing_tracker_is_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    class Broken:
        def log_params(self, params):
            pass

        def log_metrics(self, step, metrics):
            raise OSError("disk full")

        def log_artifacts(self, paths):
            pass

        def close(self, status="FINISHED"):
            pass

    log_dir = tmp_path / "tb"
    trackers = Trackers(
        {"broken": Broken(), "tensorboard": TensorBoardTracker(log_dir, purge_step=1)}
    )
    _write_events(trackers, tmp_path / "metrics.jsonl")
    trackers.close()
    assert "warning: broken tracking stopped (OSError: disk full)" in capsys.readouterr().err
    _assert_series(_tb_scalars(log_dir), EXPECTED)  # the healthy tracker got everything


@pytest.mark.parametrize("key", ["tensorboard", "mlflow"])
def test_missing_package_is_a_user_error(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, key, None)  # makes `import key` fail like an absent package
    cfg = Config.model_validate({"tracking": {key: True}, "run": {"output_dir": str(tmp_path)}})
    for call in (lambda: require_packages(cfg.tracking), lambda: open_trackers(cfg, tmp_path)):
        with pytest.raises(UserError) as err:
            call()
        assert f"tracking.{key} is on" in str(err.value)
        assert 'pip install "lmtune[tracking]"' in str(err.value)
        assert f"tracking.{key}: false" in str(err.value)
    require_packages(Config().tracking)  # both off: nothing is imported, nothing fails


def test_unusable_mlflow_store_is_a_user_error(tmp_path: Path) -> None:
    cfg = Config.model_validate(
        {
            "tracking": {
                "mlflow": True,
                "tensorboard": True,
                "mlflow_tracking_uri": "bogus-scheme://nowhere",
            }
        }
    )
    with pytest.raises(UserError) as err:
        open_trackers(cfg, tmp_path)
    assert "tracking.mlflow_tracking_uri" in str(err.value) and "bogus-scheme://nowhere" in str(
        err.value
    )
