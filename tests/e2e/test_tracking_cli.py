"""Experiment tracking through the real CLI on a tiny model: TensorBoard and MLflow hold the
same numbers as metrics.jsonl and summary.json; off (the default) imports neither package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lmtune.config import dump_config
from lmtune.train.tracking import default_mlflow_uri
from runkit import cli_exit, config, sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store: creating one runs ~70 schema migrations (seconds on a busy
    disk), so each run folder gets a copy where lmtune would create RUN/mlflow.db."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(tracking_uri=default_mlflow_uri(folder)).search_experiments()
    return folder / "mlflow.db"


def _write_config(tmp_path: Path, tracking: dict[str, Any], **train: Any) -> tuple[Path, Path]:
    """A tiny classification run (train/eval/test splits) as a YAML file; returns (yaml, run dir)."""
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(60))
    cfg = config(
        tmp_path,
        run={"name": "tiny-tracked"},
        tracking=tracking,
        model={"name_or_path": str(model_dir), "max_length": 32},
        data={"train": str(data), "split": {"eval": 0.2, "test": 0.2}},
        train={"epochs": 2, "eval_every": 2, "log_every": 1, **train},
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    return path, tmp_path / "run"


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _series(events: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in events]


def _mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=default_mlflow_uri(run_dir))
    exp = client.get_experiment_by_name(
        "tiny-tracked"
    )  # tracking.mlflow_experiment defaults to run.name
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _history(client: Any, run: Any, tag: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]


def test_train_with_tensorboard_and_mlflow(tmp_path: Path, empty_store: Path) -> None:
    path, run_dir = _write_config(tmp_path, {"tensorboard": True, "mlflow": True})
    run_dir.mkdir()
    shutil.copy(empty_store, run_dir / "mlflow.db")
    assert cli_exit("train", str(path), "--quiet") == 0
    train, evals = _events(run_dir, "train"), _events(run_dir, "eval")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(train) == summary["train_steps"] == 8  # 36 train rows / batch 8 = 4 steps x 2 epochs
    assert [e["step"] for e in evals] == [2, 4, 6, 8]

    # TensorBoard: every train/eval number of metrics.jsonl at its step (float32).
    scalars = _tb_scalars(run_dir / "tensorboard")
    want = {
        "train/loss": _series(train, "loss"),
        "train/lr": _series(train, "lr"),
        "train/tokens": _series(train, "tokens"),
        "eval/loss": _series(evals, "eval_loss"),
        "eval/accuracy": _series(evals, "accuracy"),
        "eval/macro_f1": _series(evals, "macro_f1"),
    }
    for tag, points in want.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert scalars["summary/test/accuracy"] == [(8, pytest.approx(summary["test"]["accuracy"]))]

    # MLflow: the resolved config as parameters, the same histories, summary metrics, artifacts.
    client, run = _mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-tracked"
    params = run.data.params
    assert params["train.lr"] == "0.005" and params["train.batch_size"] == "8"
    assert params["model.name_or_path"] == str(tmp_path / "tiny-bert")
    assert params["tracking.mlflow"] == "true" and params["data.split.test"] == "0.2"
    assert (
        params["train.adam_betas"] == "[0.9, 0.999]"
        and params["tracking.mlflow_tracking_uri"] == "null"
    )
    for tag, points in want.items():
        assert _history(client, run, tag) == points, tag  # float64: exact
    metrics = run.data.metrics
    assert metrics["summary/train_steps"] == 8
    assert metrics["summary/test/accuracy"] == summary["test"]["accuracy"]
    assert metrics["summary/best_metric_value"] == summary["best_metric_value"]
    assert (
        metrics["summary/eval_before/eval/accuracy"] == summary["eval_before"]["eval"]["accuracy"]
    )
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert artifacts == ["MODEL_CARD.md", "config.yaml", "eval.json", "report.html", "summary.json"]
    assert (
        run_dir / "mlartifacts" / run.info.run_id / "artifacts" / "MODEL_CARD.md"
    ).read_text() == (run_dir / "MODEL_CARD.md").read_text()


def test_resume_continues_the_tracked_run(tmp_path: Path, empty_store: Path) -> None:
    from lmtune.config import load_config
    from lmtune.train.run import run_training

    path, run_dir = _write_config(tmp_path, {"tensorboard": True, "mlflow": True}, save_every=2)
    run_dir.mkdir()
    shutil.copy(empty_store, run_dir / "mlflow.db")
    cfg = load_config(path)
    assert run_training(cfg, quiet=True, stop_after=5) == {
        "interrupted_at": 5
    }  # checkpoint: step 4
    client, run = _mlflow_run(run_dir)
    assert run.info.status == "KILLED"
    run_training(cfg, quiet=True, resume=True)

    train = _events(run_dir, "train")
    assert [e["step"] for e in train] == [1, 2, 3, 4, 5, 5, 6, 7, 8]  # step 5 ran twice
    last = {e["step"]: e["loss"] for e in train}  # the resumed run's value wins
    # TensorBoard drops what the killed run logged after its checkpoint: each step once.
    tb = _tb_scalars(run_dir / "tensorboard")["train/loss"]
    assert [s for s, _ in tb] == sorted(last)
    assert [v for _, v in tb] == pytest.approx([last[s] for s in sorted(last)], rel=1e-6)
    # MLflow keeps one run (same id, FINISHED) whose history holds every line of metrics.jsonl.
    client, resumed = _mlflow_run(run_dir)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert sorted(_history(client, resumed, "train/loss")) == sorted(_series(train, "loss"))


def test_tracking_off_imports_neither_package(tmp_path: Path) -> None:
    path, run_dir = _write_config(tmp_path, {})
    script = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'tests')!r}]\n"
        "from runkit import cli_exit\n"
        f"code = cli_exit('train', {str(path)!r}, '--quiet')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')\n"
        "                or m == 'torch.utils.tensorboard')\n"
        "print(json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    assert (run_dir / "summary.json").is_file()
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlflow.db").exists()


def test_missing_package_stops_the_cli_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path, run_dir = _write_config(tmp_path, {"mlflow": True})
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    assert cli_exit("train", str(path), "--quiet") == 2
    err = " ".join(capsys.readouterr().err.split())
    # The [tracking] extra survives rich's markup (the CLI escapes error text).
    assert "tracking.mlflow is on" in err and 'pip install "lmtune[tracking]"' in err
    assert "tracking.mlflow: false" in err
    assert "Traceback" not in err
    assert not (run_dir / "data").exists() and not (run_dir / "metrics.jsonl").exists()
