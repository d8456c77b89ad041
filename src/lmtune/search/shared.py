"""One study shared by several `lmtune tune` workers (search.storage: an Optuna RDB URL).

Optuna's RDB storage hands each worker its own trials (a trial number is taken in one
transaction, so no trial runs twice). A worker that dies leaves its trial RUNNING: every
running trial records a heartbeat, and a trial silent for two intervals is failed by the
next worker to look and queued again once (RetryHeartbeatStaleTrialCallback(max_retry=1)).
Each worker waits for the others' running trials before it writes the results, so every
worker reports the same best trial and run folder.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lmtune.errors import UserError


def redact(url: str) -> str:
    """The storage URL without its password (for logs and search.json)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def shared_storage(url: str, heartbeat_seconds: int) -> Any:
    """An Optuna RDBStorage at url with heartbeats and one retry of a dead worker's trial."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    url = with_driver(url)
    try:
        with warnings.catch_warnings():
            # heartbeats and the retry callback are marked experimental; their use is plain.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for attempt in range(10):
                try:
                    return _rdb(url, heartbeat_seconds)
                except (IntegrityError, ProgrammingError):
                    # Workers that start together on an empty database race to create
                    # Optuna's tables; the loser finds them made on the next try.
                    if attempt == 9:
                        raise
                    time.sleep(0.5 + 0.5 * attempt)
    except (ModuleNotFoundError, ImportError) as exc:
        raise UserError(
            f"search.storage {redact(url)} needs its database driver ({exc}): "
            'pip install "lmtune[postgres]" (psycopg2) or the driver of your database'
        ) from None
    except Exception as exc:  # sqlalchemy's OperationalError and friends: server, auth, URL
        raise UserError(
            f"search.storage {redact(url)}: cannot open the study database "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); check the URL, the server "
            "and the credentials"
        ) from None


def with_driver(url: str) -> str:
    """postgresql://... names no driver; SQLAlchemy 2.1 then picks psycopg 3. Use psycopg2
    (what the postgres extra installs) when only it is importable."""
    import importlib.util

    if url.startswith("postgresql://") or url.startswith("postgres://"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _rdb(url: str, heartbeat_seconds: int) -> Any:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return optuna.storages.RDBStorage(
        url,
        # A worker may sit in a long trial: keep its connection alive across server idles.
        engine_kwargs={"pool_pre_ping": True},
        heartbeat_interval=heartbeat_seconds,
        grace_period=2 * heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def worker_seed(seed: int, n_trials: int) -> int:
    """A sampler seed of this worker: workers that start together must not draw alike."""
    return seed + n_trials + os.getpid()


def retried_from(trial: Any) -> int | None:
    """The number of the dead worker's trial this trial runs again, or None."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = trial.study._storage.get_trial(trial._trial_id)
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def budget_callback(n_trials: int | None) -> list[Any]:
    """Stop this worker once the whole study has n_trials finished (completed or pruned)
    trials; a worker already inside a trial finishes it (at most one extra per worker)."""
    if n_trials is None:
        return []
    import optuna
    from optuna.trial import TrialState

    return [
        optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    ]


def finish(study: Any, run_trials: Callable[[int], None], poll_s: float = 1.0) -> None:
    """After this worker's share: run the trials queued again (a dead worker's), then wait
    until no trial of the study is running, so the results this worker writes are final.
    A dead worker's RUNNING trial goes stale after the grace period and is failed (and
    queued again once) by the heartbeat check here."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            run_trials(len(waiting))
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll_s)
