"""Search space parsing and checks, overrides, grid derivation, pruning hook, resume bookkeeping."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lmtune.config import Config, load_config
from lmtune.errors import UserError
from lmtune.search.hpo import (
    kept_eval,
    make_on_eval,
    open_study,
    requeue_interrupted,
    run_search,
    trials_left,
)
from lmtune.search.space import decode, grid_space, metric_key, parse_space, suggest, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(tmp: Path | None = None, **search) -> Config:
    data = {"search": {"n_trials": 4, **search}}
    if tmp is not None:
        data["run"] = {"output_dir": str(tmp / "out")}
    return Config.model_validate(data)


def test_unknown_keys_bad_ranges_and_reserved_keys_are_reported_together() -> None:
    cfg = _cfg(
        space={
            "adaptor.r": {"type": "int", "low": 4, "high": 16},  # typo
            "train.lr": {"type": "float", "low": -1.0, "high": 1e-3},  # lr must be > 0
            "run.output_dir": {"type": "categorical", "choices": ["a", "b"]},  # the tuner sets it
            "adapter.dropout": {"type": "float", "low": 0.0, "high": 0.3},  # fine
        }
    )
    with pytest.raises(UserError) as err:
        parse_space(cfg)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "search.space.adaptor.r" in msg and "did you mean adapter.r" in msg
    assert "search.space.train.lr" in msg and "-1.0" in msg and "greater than 0" in msg
    assert "search.space.run.output_dir" in msg
    assert "search.space.adapter.dropout" not in msg


def test_choices_are_checked_against_the_field() -> None:
    cfg = _cfg(space={"adapter.type": {"type": "categorical", "choices": ["lora", "qlora"]}})
    with pytest.raises(UserError, match=r"search.space.adapter.type: not valid .*'qlora'"):
        parse_space(cfg)


def test_empty_space_and_no_eval_split_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="search.space is empty"):
        parse_space(_cfg())
    cfg = _cfg(tmp_path, space={"adapter.r": {"type": "categorical", "choices": [4, 8]}})
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(
                update={"split": cfg.data.split.model_copy(update={"eval": 0.0})}
            )
        }
    )
    with pytest.raises(UserError, match="needs an eval split"):
        run_search(cfg)
    assert not (tmp_path / "out").exists()  # refused before any study or trial


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"type": "float", "low": 1e-3, "high": 1e-5}, "must be below high"),
        ({"type": "float", "low": 0.0, "high": 1e-3, "log": True}, "log: true needs low > 0"),
        ({"type": "categorical"}, "needs choices"),
        ({"type": "int", "low": 1, "high": 8.5}, "whole numbers"),
        ({"type": "float", "low": 1e-5}, "both low and high"),
        ({"type": "float", "choices": [1, 2]}, "choices are for type categorical"),
        ({"type": "float", "low": 0.1, "high": 0.2, "sigma": 1}, "unknown key"),
    ],
)
def test_malformed_specs_fail_at_load_with_their_key_path(
    tmp_path: Path, spec: dict, needle: str
) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"search": {"space": {"train.lr": spec}}}))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "search.space.train.lr" in str(err.value) and needle in str(err.value)


def test_a_search_needs_a_budget() -> None:
    with pytest.raises(UserError, match="search.n_trials or search.timeout_minutes"):
        load_config(None, ["search.n_trials=null"])


def test_sampled_values_become_config_overrides(tmp_path: Path) -> None:
    cfg = _cfg(
        space={
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "adapter.r": {"type": "categorical", "choices": [4, 8]},
            "adapter.target_modules": {
                "type": "categorical",
                "choices": ["auto", ["query", "value"]],
            },
            "train.epochs": {"type": "int", "low": 1, "high": 3},
        }
    )
    params = parse_space(cfg)
    stored = {
        "train.lr": 3e-4,
        "adapter.r": 8,
        "adapter.target_modules": '["query", "value"]',
        "train.epochs": 2,
    }
    values = suggest(optuna.trial.FixedTrial(stored), params)
    assert values == {
        "train.lr": 3e-4,
        "adapter.r": 8,
        "adapter.target_modules": ["query", "value"],
        "train.epochs": 2,
    }
    assert decode(stored, params) == values
    trial = trial_config(cfg, values, tmp_path / "trial_0003")
    assert trial.train.lr == 3e-4 and trial.adapter.r == 8 and trial.train.epochs == 2
    assert trial.adapter.target_modules == ["query", "value"]
    assert trial.run.output_dir == str(tmp_path / "trial_0003")
    assert trial.search.space == {}  # a trial is a plain run: it carries no search of its own
    assert trial.model == cfg.model and trial.train.batch_size == cfg.train.batch_size


def test_grid_is_every_combination_of_choices_and_values() -> None:
    cfg = _cfg(
        sampler="grid",
        n_trials=100,
        space={
            "adapter.target_modules": {
                "type": "categorical",
                "choices": [["query"], ["query", "value"]],
            },
            "adapter.r": {"type": "int", "values": [4, 8, 16]},
        },
    )
    params = parse_space(cfg)
    assert grid_space(params) == {
        "adapter.target_modules": ['["query"]', '["query", "value"]'],
        "adapter.r": [4, 8, 16],
    }
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_space(params), seed=0))
    seen = []
    study.optimize(
        lambda t: seen.append(suggest(t, params)) or 0.0, n_trials=20
    )  # the grid stops it
    expected = [
        {"adapter.target_modules": m, "adapter.r": r}
        for m, r in itertools.product([["query"], ["query", "value"]], [4, 8, 16])
    ]
    assert len(seen) == 6 and sorted(map(str, seen)) == sorted(map(str, expected))


def test_grid_needs_explicit_values_for_numbers() -> None:
    cfg = _cfg(sampler="grid", space={"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}})
    with pytest.raises(UserError, match="grid sampler needs explicit values"):
        parse_space(cfg)


def test_metric_names_with_or_without_eval_prefix() -> None:
    metrics = {"eval_loss": 0.5, "accuracy": 0.9, "eval_examples": 10.0}
    assert metric_key("eval_accuracy", metrics) == "accuracy"
    assert metric_key("accuracy", metrics) == "accuracy"
    assert metric_key("loss", metrics) == "eval_loss"
    with pytest.raises(
        UserError, match="search.metric 'f1' .*available: accuracy, eval_examples, eval_loss"
    ):
        metric_key("f1", metrics)


def test_on_eval_prunes_a_trial_behind_the_median() -> None:
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, value=0.9, intermediate_values={10: 0.8, 20: 0.9}
        )
    )
    good, evals = study.ask(), []
    make_on_eval(good, "eval_accuracy", evals)(10, {"accuracy": 0.85, "eval_loss": 0.3})
    assert evals == [(10, {"accuracy": 0.85, "eval_loss": 0.3})]
    assert good.storage.get_trial(good._trial_id).intermediate_values == {10: 0.85}
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned, match="step 10: accuracy 0.2000"):
        make_on_eval(bad, "accuracy", [])(10, {"accuracy": 0.2})
    with pytest.raises(UserError, match="search.metric 'bleu'"):
        make_on_eval(study.ask(), "bleu", [])(10, {"accuracy": 0.2})


def test_resume_requeues_a_killed_trial_once_counts_the_budget_and_keeps_the_metric(
    tmp_path: Path,
) -> None:
    cfg = _cfg(
        tmp_path,
        sampler="random",
        n_trials=5,
        space={
            "adapter.r": {"type": "categorical", "choices": [4, 8]},
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        },
    )
    params = parse_space(cfg)
    study, storage = open_study(cfg, params, resume=False)
    for value in (0.3, 0.2):
        t = study.ask()
        suggest(t, params)
        study.tell(t, value)
    pruned = study.ask()
    suggest(pruned, params)
    study.tell(pruned, state=TrialState.PRUNED)
    killed = study.ask()  # what a SIGKILL leaves: RUNNING forever, parameters stored
    suggest(killed, params)
    killed_params = study.trials[killed.number].params
    assert trials_left(study, cfg.search, params) == 2  # 2 complete + 1 pruned of 5

    with pytest.raises(UserError, match="--resume"):
        open_study(cfg, params, resume=False)
    study, storage = open_study(cfg, params, resume=True)
    assert requeue_interrupted(study, storage, params) == [killed.number]
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.WAITING,
    ]
    queued = study.trials[-1]
    assert queued.user_attrs["rerun_of"] == killed.number
    assert queued.system_attrs["fixed_params"] == killed_params
    assert requeue_interrupted(study, storage, params) == []  # not queued twice

    other = cfg.model_copy(update={"search": cfg.search.model_copy(update={"metric": "accuracy"})})
    with pytest.raises(UserError, match="keeps its metric"):
        open_study(other, params, resume=True)


def test_halving_pruner_keeps_only_the_top_share_at_a_rung() -> None:
    from lmtune.config import PrunerConfig
    from lmtune.search.hpo import make_pruner

    assert isinstance(make_pruner(PrunerConfig(type="none")), optuna.pruners.NopPruner)
    pruner = make_pruner(PrunerConfig(type="halving", min_resource=5, reduction_factor=2))
    study = optuna.create_study(direction="minimize", pruner=pruner)
    first = study.ask()
    make_on_eval(first, "eval_loss", [])(
        5, {"eval_loss": 0.30}
    )  # rung 0 is at step 5; alone, it goes on
    study.tell(first, 0.30)
    with pytest.raises(optuna.TrialPruned):  # not in the better half of the rung
        make_on_eval(study.ask(), "eval_loss", [])(5, {"eval_loss": 0.45})
    make_on_eval(study.ask(), "eval_loss", [])(5, {"eval_loss": 0.10})  # the best so far goes on


def test_a_trial_is_scored_by_the_model_it_keeps() -> None:
    evals = [
        (4, {"eval_accuracy": 0.7}),
        (8, {"eval_accuracy": 0.8}),
        (12, {"eval_accuracy": 0.75}),
    ]
    assert kept_eval({"best_step": 8}, evals) == {"eval_accuracy": 0.8}
    assert kept_eval({}, evals) == {"eval_accuracy": 0.75}
    averaged = {
        "best_step": 12,
        "best_eval": {"event": "eval", "step": 12, "eval_accuracy": 0.85, "weight_average": True},
    }
    assert kept_eval(averaged, evals)["eval_accuracy"] == 0.85
