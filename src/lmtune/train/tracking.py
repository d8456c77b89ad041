"""Experiment tracking beside metrics.jsonl: TensorBoard scalars and an MLflow run.

Both are off by default and both write local files only (no server, no network). The loop
knows nothing about them: MetricsLog hands every event it writes to `Trackers.log_event`, so
TensorBoard and MLflow get exactly the numbers of metrics.jsonl, for every task. run_training
opens the trackers on the main process only (the others never log), logs the resolved config
as parameters, and at the end the summary figures, the report and the model card.
tensorboard and mlflow are imported only when switched on (`pip install "lmtune[tracking]"`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from lmtune.errors import UserError

if TYPE_CHECKING:
    from lmtune.config import Config, TrackingConfig

INSTALL_HINT = 'pip install "lmtune[tracking]"'
# metrics.jsonl fields that are not metrics: step is the x axis, the rest is bookkeeping.
_NOT_METRICS = ("event", "step", "time", "epoch")
_TRACKED_EVENTS = ("train", "eval", "eval_average")
# Run-folder files worth keeping with an MLflow run (small; the model folder is not).
ARTIFACTS = ("config.yaml", "summary.json", "eval.json", "report.html", "MODEL_CARD.md")


class Tracker(Protocol):
    """One tracking backend, as the fan-out calls it."""

    def log_params(self, params: dict[str, str]) -> None:
        """Record the run's parameters (flattened config keys, string values)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record scalar values at an optimizer step."""

    def log_artifacts(self, paths: list[Path]) -> None:
        """Keep copies of files with the run (backends without artifacts ignore this)."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run; status is FINISHED, FAILED or KILLED."""


def flatten(tree: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level of joined keys ({"a": {"b": 1}} -> {"a.b": 1}); an empty
    dict stays a value, so every config key shows up."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + sep, sep))
        else:
            out[name] = value
    return out


def config_params(cfg: Config) -> dict[str, str]:
    """The resolved config as flat parameters: train.lr -> "5e-05", data.labels -> '["neg", "pos"]'."""
    flat = flatten(cfg.model_dump(mode="json"))
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def event_metrics(event: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """A metrics.jsonl event as (step, {tag: value}); None unless it is a train or eval event.

    Tags are EVENT/KEY (train/loss, train/lr, eval/accuracy); an eval_ prefix is dropped in
    eval events, so eval_loss becomes eval/loss next to eval/accuracy.
    """
    kind = event.get("event")
    if kind not in _TRACKED_EVENTS or "step" not in event:
        return None
    metrics = {}
    for key, value in event.items():
        if key in _NOT_METRICS or not _is_number(value):
            continue
        name = key[len("eval_") :] if kind.startswith("eval") and key.startswith("eval_") else key
        metrics[f"{kind}/{name}"] = float(value)
    return int(event["step"]), metrics


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of summary.json as summary/KEY tags (nested keys joined with /)."""
    flat = flatten(summary, "summary/", "/")
    return {k: float(v) for k, v in flat.items() if _is_number(v)}


class TensorBoardTracker:
    """Scalars in TensorBoard event files, written by torch's SummaryWriter."""

    def __init__(self, log_dir: Path, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides events at or after purge_step that earlier writers left in this
        # folder: a rerun into the same run folder starts clean, and a --resume replaces the
        # steps a killed run logged after its last checkpoint instead of drawing them twice.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log_params(self, params: dict[str, str]) -> None:
        """The config as text (the Text tab): TensorBoard has no parameter table."""
        lines = "\n".join(f"{k}: {v}" for k, v in params.items())
        self.writer.add_text("config", f"```\n{lines}\n```", 0)
        self.writer.flush()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One scalar per tag; flushed at once so a killed run keeps its curves."""
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_artifacts(self, paths: list[Path]) -> None:
        """TensorBoard keeps no files."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close the event file."""
        self.writer.close()


def import_mlflow() -> Any:
    """Import mlflow with its usage telemetry off unless the user opted in: a local-only
    tracker must not try to reach a server (MLflow 3 sends usage events by default)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return importlib.import_module("mlflow")


def _mlflow_limit(name: str, default: int) -> int:
    from mlflow.utils import validation

    return int(getattr(validation, name, default))


def _mlflow_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . space and /; data.columns keys are user text.
    return re.sub(r"[^\w\-. /]", "_", key)[:250]


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow's default is ./mlartifacts in the cwd)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()


class MLflowTracker:
    """One MLflow run in a local store: parameters, metric history per step, artifacts.

    The run is tagged with its run folder, so `--resume` continues the same MLflow run.
    Metrics a killed run logged after its last checkpoint stay in the history (MLflow never
    deletes them); the resumed steps are logged again beside them.
    """

    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, run_dir: Path, resume: bool
    ) -> None:
        import_mlflow()
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                experiment, artifact_location=_artifact_location(tracking_uri)
            )
        )
        folder = str(run_dir.resolve())
        # A hash of the folder as the lookup key: no quoting trouble in the search filter.
        key = hashlib.sha1(folder.encode()).hexdigest()[:16]
        found = (
            self.client.search_runs(
                [exp_id],
                filter_string=f"tags.`lmtune.run_key` = '{key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if resume
            else []
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"lmtune.run_dir": folder, "lmtune.run_key": key}
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self.closed = False

    def log_params(self, params: dict[str, str]) -> None:
        """Parameters in batches within MLflow's limits; values longer than the limit are cut.

        Parameters cannot change once logged, so a resumed run keeps those of its start.
        """
        from mlflow.entities import Param

        limit = _mlflow_limit("MAX_PARAM_VAL_LENGTH", 500)
        per_batch = _mlflow_limit("MAX_PARAMS_TAGS_PER_BATCH", 100)
        known = self.client.get_run(self.run_id).data.params
        items = [
            Param(_mlflow_key(k), v[:limit])
            for k, v in params.items()
            if _mlflow_key(k) not in known
        ]
        for i in range(0, len(items), per_batch):
            self.client.log_batch(self.run_id, params=items[i : i + per_batch])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metric values at `step` (one history point per tag)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        per_batch = _mlflow_limit("MAX_METRICS_PER_BATCH", 1000)
        for i in range(0, len(items), per_batch):
            self.client.log_batch(self.run_id, metrics=items[i : i + per_batch])

    def log_artifacts(self, paths: list[Path]) -> None:
        """Copy the files that exist into the run's artifact folder."""
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run ended (once)."""
        if not self.closed:
            self.closed = True
            self.client.set_terminated(self.run_id, status)


class Trackers:
    """Fan-out to the enabled trackers; with none, every call does nothing.

    A backend that fails mid-run is dropped with a warning: tracking must never cost a
    training run, and metrics.jsonl still has every event. As a context manager it closes
    the runs: FINISHED, FAILED on an exception, KILLED on Ctrl-C.
    """

    def __init__(self, trackers: dict[str, Tracker] | None = None) -> None:
        self.trackers = dict(trackers or {})

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                del self.trackers[name]
                print(
                    f"warning: {name} tracking stopped ({type(exc).__name__}: {exc}); "
                    "metrics.jsonl keeps every event",
                    file=sys.stderr,
                    flush=True,
                )

    def log_params(self, params: dict[str, str]) -> None:
        """Parameters to every tracker."""
        self._each("log_params", params)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at `step` to every tracker."""
        if metrics:
            self._each("log_metrics", step, metrics)

    def log_event(self, event: dict[str, Any]) -> None:
        """A metrics.jsonl event (MetricsLog calls this for each one it writes)."""
        if self.trackers and (found := event_metrics(event)) is not None:
            self.log_metrics(*found)

    def log_summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        """The summary's numbers at the last step, and the run's small result files."""
        self.log_metrics(int(summary.get("train_steps") or 0), summary_metrics(summary))
        self._each("log_artifacts", [run_dir / name for name in ARTIFACTS])

    def close(self, status: str = "FINISHED") -> None:
        """End every run (a second call does nothing)."""
        self._each("close", status)
        self.trackers.clear()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("FAILED" if issubclass(exc_type, Exception) else "KILLED")


def require_packages(tc: TrackingConfig) -> None:
    """Fail before any work when a tracker is on but its package is missing; the message names
    the config key and the fix. Every process checks, so all of them stop alike."""
    for key in ("tensorboard", "mlflow"):
        if not getattr(tc, key):
            continue
        try:
            if key == "mlflow":
                import_mlflow()
            else:
                importlib.import_module(key)
        except ImportError as exc:
            raise UserError(
                f"tracking.{key} is on but the {key} package cannot be imported "
                f"({exc}); install it with `{INSTALL_HINT}` or set tracking.{key}: false"
            ) from None


def resume_step(run_dir: Path) -> int:
    """The step of the checkpoint `--resume` continues from (0 when there is none)."""
    from lmtune.train.checkpoint import CKPT_PREFIX, list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name[len(CKPT_PREFIX) :]) if found else 0


def default_mlflow_uri(run_dir: Path) -> str:
    """sqlite:///RUN/mlflow.db as an absolute URI (MLflow 3 refuses plain-folder stores)."""
    return "sqlite:///" + (run_dir / "mlflow.db").resolve().as_posix()


def open_trackers(cfg: Config, run_dir: Path, resume: bool = False) -> Trackers:
    """The trackers cfg.tracking switches on, with the resolved config logged as parameters.

    Call it on the main process only. A store that cannot be opened is a UserError naming
    the key, raised before training starts.
    """
    tc = cfg.tracking
    if not (tc.tensorboard or tc.mlflow):
        return Trackers()
    require_packages(tc)
    trackers: dict[str, Tracker] = {}
    if tc.tensorboard:
        first = resume_step(run_dir) + 1 if resume else 1  # the loop's first logged step
        trackers["tensorboard"] = TensorBoardTracker(
            Path(tc.tensorboard_dir or run_dir / "tensorboard"), first
        )
    if tc.mlflow:
        uri = tc.mlflow_tracking_uri or default_mlflow_uri(run_dir)
        try:
            trackers["mlflow"] = MLflowTracker(
                uri, tc.mlflow_experiment or cfg.run.name, cfg.run.name, run_dir, resume
            )
        except Exception as exc:
            Trackers(trackers).close("FAILED")
            raise UserError(
                f"tracking.mlflow_tracking_uri: MLflow cannot use the store {uri} "
                f"({type(exc).__name__}: {exc}); give a local store such as "
                "sqlite:///runs/mlflow.db, or leave it unset for RUN/mlflow.db"
            ) from None
    fan = Trackers(trackers)
    fan.log_params(config_params(cfg))
    return fan
