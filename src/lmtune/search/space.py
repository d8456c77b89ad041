"""The search space of `lmtune tune`: parsing and checking search.space, sampling, overrides.

A space key is any dotted config key (`train.lr`, `adapter.target_modules`); each is checked
against the config schema and the field's own rules before a study starts, so a typo or an
impossible range fails in a second, not after hours of trials.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lmtune.config import Config, SearchParam, describe_fields
from lmtune.errors import UserError


@dataclass(frozen=True)
class Param:
    """One validated dimension. Choice-based ones keep what Optuna stores (`labels`, scalars)
    beside the config values they stand for (`values`): Optuna cannot store a list choice."""

    key: str
    spec: SearchParam
    labels: tuple[Any, ...] = ()
    values: tuple[Any, ...] = ()


def _label(value: Any) -> Any:
    """The scalar Optuna stores for a choice: the value itself, or its JSON when it is a list."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set `a.b.c` in a nested dict (creating sections as needed); returns the same dict."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return data


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """Read `a.b.c` from a nested dict (KeyError when absent)."""
    for part in key.split("."):
        data = data[part]
    return data


def trial_data(base: Config) -> dict[str, Any]:
    """The base config as plain data without its search block: a trial is a plain training run."""
    data = base.model_dump(mode="json")
    data.pop("search", None)
    return data


def _problem(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()
    )


def trial_config(base: Config, overrides: dict[str, Any], run_dir: Path) -> Config:
    """Base config + sampled values, writing to `run_dir`."""
    data = trial_data(base)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    set_dotted(data, "run.output_dir", str(run_dir))
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise UserError(
            f"the sampled values {overrides} make an invalid config ({_problem(err)}); "
            "narrow search.space so the keys cannot conflict"
        ) from None


def parse_space(cfg: Config) -> list[Param]:
    """Check every key of search.space against the config schema and every end of its range
    (or choice) against the field's own rules, before any trial runs; all problems at once."""
    search = cfg.search
    if not search.space:
        raise UserError(
            "search.space is empty: name the config keys to search, e.g. "
            "search: {space: {train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}}"
        )
    known = [key for key, _, _ in describe_fields()]
    base = trial_data(cfg)
    problems: list[str] = []
    params: list[Param] = []
    for key, spec in search.space.items():
        where = f"search.space.{key}"
        if key == "run.output_dir" or key.split(".")[0] == "search":
            problems.append(
                f"{where}: set by the tuner itself (each trial writes to OUT/trials/trial_NNNN)"
            )
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else "`lmtune config show --fields` lists them"
            )
            problems.append(f"{where}: '{key}' is not a config key ({hint})")
            continue
        grid = search.sampler == "grid"
        if grid and spec.type != "categorical" and not spec.values:
            problems.append(
                f"{where}: the grid sampler needs explicit values: [...] for type {spec.type}"
            )
            continue
        numeric = int if spec.type == "int" else float
        choices = (
            spec.choices
            if spec.type == "categorical"
            else ([numeric(v) for v in spec.values or []] if grid or spec.low is None else None)
        )
        if choices is not None:
            labels = tuple(_label(v) for v in choices)
            if len(set(labels)) != len(labels):
                problems.append(f"{where}: a choice is listed twice")
                continue
            param, tried = Param(key, spec, labels, tuple(choices)), list(choices)
        else:
            param, tried = Param(key, spec), [numeric(spec.low), numeric(spec.high)]
        bad = [f"{v!r} ({msg})" for v in tried if (msg := _invalid(base, key, v))]
        if bad:
            problems.append(f"{where}: not valid for {key}: {'; '.join(bad)}")
        params.append(param)
    if problems:
        raise UserError(
            f"{len(problems)} problem(s) in search.space:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return params


def _invalid(base: dict[str, Any], key: str, value: Any) -> str | None:
    """Why the config rejects `value` at `key` (None when it accepts it)."""
    try:
        Config.model_validate(set_dotted(copy.deepcopy(base), key, value))
    except ValidationError as err:
        return _problem(err)
    return None


def suggest(trial: Any, params: list[Param]) -> dict[str, Any]:
    """Ask the trial for a value of every dimension; returns config key -> config value."""
    out: dict[str, Any] = {}
    for p in params:
        s = p.spec
        if p.labels:
            out[p.key] = p.values[p.labels.index(trial.suggest_categorical(p.key, list(p.labels)))]
        elif s.type == "int":
            out[p.key] = trial.suggest_int(
                p.key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log
            )
        else:
            out[p.key] = trial.suggest_float(p.key, s.low, s.high, step=s.step, log=s.log)
    return out


def decode(stored: dict[str, Any], params: list[Param]) -> dict[str, Any]:
    """Optuna's stored parameters as config values (list choices back from their JSON)."""
    by_key = {p.key: p for p in params}
    out = {}
    for key, value in stored.items():
        p = by_key.get(key)
        out[key] = (
            p.values[p.labels.index(value)] if p and p.labels and value in p.labels else value
        )
    return out


def grid_space(params: list[Param]) -> dict[str, list[Any]]:
    """The grid sampler's space: every dimension's stored choices."""
    return {p.key: list(p.labels) for p in params}


def metric_key(name: str, metrics: dict[str, Any]) -> str:
    """The key of `metrics` that search.metric names (`eval_accuracy` also finds `accuracy`)."""
    for key in (name, name.removeprefix("eval_"), f"eval_{name}"):
        if isinstance(metrics.get(key), (int, float)):
            return key
    shown = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
    raise UserError(
        f"search.metric '{name}' is not reported by this task's evaluation; available: {shown}"
    )
