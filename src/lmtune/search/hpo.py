"""`lmtune tune`: hyperparameter search with Optuna over any config key.

The config's `search:` block names the keys to vary and how. Every trial is an ordinary run
folder OUT/trials/trial_NNNN, trained in this process by run_training; the evaluations the
loop already makes feed the pruner through its `on_eval` hook. The study lives in
OUT/study.db (SQLite), so a killed search continues with --resume: finished and pruned
trials stay, and a trial that was running is marked failed and re-run with its parameters.
"""

from __future__ import annotations

import gc
import json
import math
import sqlite3
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from lmtune.config import Config, PrunerConfig, SearchConfig
from lmtune.errors import UserError
from lmtune.report.collect import scalar_metrics
from lmtune.search.results import (
    console,
    print_table,
    short_value,
    trial_row,
    write_results,
)
from lmtune.search.shared import budget_callback, finish
from lmtune.search.space import (
    Param,
    grid_space,
    metric_key,
    parse_space,
    suggest,
    trial_config,
)

#: One study per output folder; the name only has to stay the same for --resume to find it.
STUDY_NAME = "lmtune"


# ---- the study ---------------------------------------------------------------------------


def make_sampler(search: SearchConfig, params: list[Param], seed: int) -> Any:
    """The Optuna sampler search.sampler names."""
    import optuna

    if search.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(params), seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.n_startup_trials)


def make_pruner(pruner: PrunerConfig) -> Any:
    """The Optuna pruner search.pruner names."""
    import optuna

    if pruner.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.type == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, params: list[Param], resume: bool) -> tuple[Any, Any]:
    """Create OUT/study.db, or load it for --resume; returns (study, storage)."""
    import optuna

    search, out = cfg.search, Path(cfg.run.output_dir)
    if search.storage:
        return _open_shared(cfg, params)
    db = out / "study.db"
    if db.exists() and not resume:
        raise UserError(
            f"{db} already holds a search: add --resume to continue it, "
            "or set run.output_dir to a new folder"
        )
    if resume and not db.exists():
        console.print(f"--resume: no study in {db}; starting a new search")
    out.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        # Write-ahead log (kept in the file): every report and tell is a commit, and WAL makes
        # each one fsync once instead of several (2.5x faster here); a kill loses nothing committed.
        with closing(sqlite3.connect(db)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction=search.direction,
        load_if_exists=True,
        pruner=make_pruner(search.pruner),
    )
    before = study.user_attrs.get("metric")
    if study.trials and (
        before != search.metric or study.direction.name.lower() != search.direction
    ):
        raise UserError(
            f"{db} scores trials by {before} ({study.direction.name.lower()}); this config says "
            f"search.metric {search.metric} ({search.direction}). A resumed search keeps its "
            "metric: restore it, or set run.output_dir to a new folder"
        )
    study.set_user_attr("metric", search.metric)
    study.set_user_attr("search", search.model_dump(mode="json"))
    seed = cfg.run.seed if search.seed is None else search.seed
    # Offset by the trials already stored: a resumed sampler reseeded with the same seed would
    # draw the same random start-up points as the first invocation and repeat its trials.
    study.sampler = make_sampler(search, params, seed + len(study.trials))
    return study, storage


def _open_shared(cfg: Config, params: list[Param]) -> tuple[Any, Any]:
    """Join (or create) the study at search.storage that other workers share."""
    import optuna

    from lmtune.search.shared import shared_storage, worker_seed

    search = cfg.search
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    storage = shared_storage(search.storage, search.heartbeat_seconds)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.run.name,  # one study per run name on the server
        direction=search.direction,
        load_if_exists=True,
        pruner=make_pruner(search.pruner),
    )
    before = study.user_attrs.get("metric")
    if before is not None and before != search.metric:
        raise UserError(
            f"the study {cfg.run.name} at search.storage scores trials by {before}; this config "
            f"says search.metric {search.metric}: use the same metric, or another run.name"
        )
    study.set_user_attr("metric", search.metric)
    study.set_user_attr("search", search.model_dump(mode="json"))
    seed = cfg.run.seed if search.seed is None else search.seed
    study.sampler = make_sampler(search, params, worker_seed(seed, len(study.trials)))
    return study, storage


def requeue_interrupted(study: Any, storage: Any, params: list[Param]) -> list[int]:
    """Mark trials a kill left RUNNING as failed, and queue a re-run of every interrupted trial
    (killed, or stopped with Ctrl-C) with the same parameters; returns their numbers."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    keys = [p.key for p in params]
    queued = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            # One search per folder: nothing else is running this study, so the trial died.
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number not in rerun and all(k in t.params for k in keys):
            study.enqueue_trial({k: t.params[k] for k in keys}, user_attrs={"rerun_of": t.number})
            queued.append(t.number)
    return queued


def trials_left(study: Any, search: SearchConfig, params: list[Param]) -> int | None:
    """Trials still to run: search.n_trials counts completed and pruned ones over all invocations."""
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    budget = search.n_trials
    if search.sampler == "grid":
        size = math.prod(len(p.labels) for p in params)
        budget = size if budget is None else min(budget, size)
    return None if budget is None else max(budget - done, 0)


def _budget(study: Any, left: int | None) -> int | None:
    """The study-wide number of finished trials to stop at (trials_left counts from it)."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return None if left is None else left + len(study.get_trials(deepcopy=False, states=finished))


def make_on_eval(
    trial: Any, metric: str, evals: list[tuple[int, dict[str, float]]]
) -> Callable[[int, dict[str, float]], None]:
    """The loop's on_eval hook: report the metric to the trial; stop the run when pruned."""

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        import optuna

        key = metric_key(metric, metrics)
        value = float(metrics[key])
        evals.append((step, dict(metrics)))
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at step {step}: {key} {value:.4f} trails the earlier trials"
            )

    return on_eval


def kept_eval(
    summary: dict[str, Any], evals: list[tuple[int, dict[str, float]]]
) -> dict[str, float]:
    """The evaluation of the model the run keeps (train.early_stopping picks the checkpoint, or
    train.average's mean when it is kept), else the last."""
    if not evals:
        raise UserError(
            "the trial made no evaluation to score it by: give it an eval split "
            "(data.eval, or data.split.eval > 0)"
        )
    best = summary.get("best_eval")
    if isinstance(best, dict) and best.get("weight_average"):  # train.average kept the mean
        return scalar_metrics(best)
    return dict(evals).get(summary.get("best_step"), evals[-1][1])


def make_objective(cfg: Config, params: list[Param], quiet: bool) -> Callable[[Any], float]:
    """One trial: sample, train in OUT/trials/trial_NNNN, return the metric."""
    out = Path(cfg.run.output_dir)

    def objective(trial: Any) -> float:
        from lmtune.train.run import run_training

        values = suggest(trial, params)
        run_dir = out / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial_cfg = trial_config(cfg, values, run_dir)
        if cfg.search.storage:
            from lmtune.search.shared import retried_from

            if (first := retried_from(trial)) is not None:
                trial.set_user_attr("rerun_of", first)
        rerun = trial.user_attrs.get("rerun_of")
        console.print(
            f"[bold]trial {trial.number}[/]"
            + (f" (re-run of {rerun})" if rerun is not None else "")
            + ": "
            + ", ".join(f"{k}={short_value(v)}" for k, v in values.items()),
            highlight=False,
        )
        evals: list[tuple[int, dict[str, float]]] = []
        try:
            summary = run_training(
                trial_cfg, quiet=quiet, on_eval=make_on_eval(trial, cfg.search.metric, evals)
            )
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # so --resume re-runs it, like a killed trial
            raise
        finally:
            gc.collect()  # the trial's model and optimizer state, before the next one loads
        chosen = kept_eval(summary, evals)
        trial.set_user_attr("eval", chosen)  # every metric of the kept checkpoint, for the tables
        return float(chosen[metric_key(cfg.search.metric, chosen)])

    return objective


def _after_trial(params: list[Param], metric: str) -> Callable[[Any, Any], None]:
    """Study callback: trial.json in the trial's run folder, and one line on the console."""

    def callback(study: Any, t: Any) -> None:
        row = trial_row(t, params)
        if row["run_dir"] and Path(row["run_dir"]).is_dir():
            (Path(row["run_dir"]) / "trial.json").write_text(
                json.dumps({**row, "metric": metric}, indent=2)
            )
        value = "" if row["value"] is None else f": {metric} {row['value']:.4f}"
        where = f" at step {row['pruned_at_step']}" if row["pruned_at_step"] is not None else ""
        console.print(
            f"trial {t.number} {row['state'].lower()}{where}{value} ({row['duration_s']} s)",
            highlight=False,
        )

    return callback


def run_search(cfg: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """The whole `lmtune tune` run; returns the summary (also OUT/search.json)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial of our own instead
    search, out = cfg.search, Path(cfg.run.output_dir)
    params = parse_space(cfg)
    if cfg.data.eval is None and cfg.data.split.eval == 0:
        raise UserError(
            "search needs an eval split to score trials: set data.eval or data.split.eval > 0"
        )
    notes = []
    if search.pruner.type != "none" and cfg.train.eval_every == 0:
        notes.append(
            "pruning sees only the end-of-epoch evaluations; set train.eval_every to prune sooner"
        )
    kept_by = cfg.train.early_stopping.metric
    if kept_by.removeprefix("eval_") != search.metric.removeprefix("eval_"):
        notes.append(
            f"a trial's value is {search.metric} at the checkpoint train.early_stopping.metric "
            f"({kept_by}) keeps; set it to {search.metric} to keep the best"
        )
    study, storage = open_study(cfg, params, resume)
    # A shared study: a dead worker's trial is found by its heartbeat, not by being RUNNING.
    for n in [] if search.storage else requeue_interrupted(study, storage, params):
        console.print(f"trial {n} was interrupted: it runs again with the same parameters")
    left = trials_left(study, search, params)
    grid = math.prod(len(p.labels) for p in params)
    if search.sampler == "grid" and (search.n_trials or 0) > grid:
        notes.append(
            f"the grid has {grid} points: search.n_trials {search.n_trials} is capped there"
        )
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    t0 = time.perf_counter()
    try:
        if left is None or left > 0:
            with warnings.catch_warnings():
                # enqueue/user-attr features are marked experimental; their use here is plain.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                objective = make_objective(cfg, params, quiet)
                callbacks = [_after_trial(params, search.metric)]
                study.optimize(
                    objective,
                    n_trials=left,
                    timeout=search.timeout_minutes * 60 if search.timeout_minutes else None,
                    callbacks=callbacks
                    + (budget_callback(_budget(study, left)) if search.storage else []),
                    gc_after_trial=True,
                )
                if search.storage:  # others' trials: run the requeued ones, wait for the rest
                    finish(study, lambda n: study.optimize(objective, n, callbacks=callbacks))
        else:
            console.print(
                f"search.n_trials {search.n_trials} trials are done already; writing the results"
            )
    finally:
        # Also after an error or Ctrl-C: what finished so far is worth a table.
        summary = write_results(cfg, study, params, time.perf_counter() - t0, notes)
    rows = json.loads((out / "trials.json").read_text())
    print_table(summary, rows, [p.key for p in params])
    console.print(f"results: {out / 'trials.csv'}, {out / 'report.html'}; continue with --resume")
    return summary
