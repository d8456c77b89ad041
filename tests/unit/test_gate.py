"""The release gate's pure checks (ops/gate.py) and the pipeline's checks before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.config_ops import GateConfig
from lmtune.errors import UserError
from lmtune.ops import gate
from lmtune.ops.pipeline import fingerprint_test_split, preflight

TEST = {"eval_loss": 0.40, "accuracy": 0.82, "macro_f1": 0.80, "eval_examples": 50.0}
BASELINES = {
    "metric": "accuracy",
    "rows": [
        {"method": "zero-shot", "k": 0, "accuracy": 0.61, "macro_f1": 0.55},
        {"method": "few-shot", "k": 16, "accuracy": 0.74, "macro_f1": 0.73},
        {"method": "fine-tuned", "k": None, "accuracy": 0.82, "macro_f1": 0.80},
    ],
}


def test_threshold_margins_for_max_and_min() -> None:
    ok = gate.threshold_check("accuracy", "max", 0.82, 0.80)
    assert ok["passed"] and ok["margin"] == pytest.approx(0.02) and ok["threshold"] == 0.80
    short = gate.threshold_check("accuracy", "max", 0.82, 0.85)
    assert not short["passed"] and short["margin"] == pytest.approx(-0.03)
    assert "short by 0.0300" in short["detail"]
    assert gate.threshold_check("accuracy", "max", 0.85, 0.85)["passed"]  # reaching it is enough
    low = gate.threshold_check("eval_loss", "min", 0.40, 0.50)
    assert low["passed"] and low["margin"] == pytest.approx(0.10) and "<=" in low["detail"]
    high = gate.threshold_check("eval_loss", "min", 0.40, 0.30)
    assert not high["passed"] and high["margin"] == pytest.approx(-0.10)


def test_beat_check_uses_direction_and_min_improvement() -> None:
    c = gate.beat_check("beat_current", "accuracy", "max", 0.82, 0.80, "v1", min_improvement=0.01)
    assert c["passed"] and c["margin"] == pytest.approx(0.01) and c["other"] == 0.80
    c = gate.beat_check("beat_current", "accuracy", "max", 0.82, 0.80, "v1", min_improvement=0.05)
    assert (
        not c["passed"] and c["margin"] == pytest.approx(-0.03) and "short by 0.0300" in c["detail"]
    )
    assert gate.beat_check("b", "accuracy", "max", 0.80, 0.80, "v1")["passed"]  # a tie passes at 0
    c = gate.beat_check("b", "eval_loss", "min", 0.45, 0.40, "v1")
    assert not c["passed"] and c["margin"] == pytest.approx(-0.05)


def test_resolve_metric_defaults() -> None:
    assert gate.resolve_metric(GateConfig(), "eval_loss", "min") == ("eval_loss", "min")
    assert gate.resolve_metric(GateConfig(), "accuracy", "max") == ("accuracy", "max")
    assert gate.resolve_metric(GateConfig(metric="eval_loss"), "accuracy", "max") == (
        "eval_loss",
        "min",
    )
    assert gate.resolve_metric(GateConfig(metric="f1"), "eval_loss", "min") == ("f1", "max")
    assert gate.resolve_metric(GateConfig(metric="ece", mode="max"), "x", "min") == ("ece", "max")


def test_missing_metric_names_the_available_ones() -> None:
    assert gate.pick_metric(TEST, "eval_accuracy", "test") == 0.82  # eval_ prefix is optional
    assert gate.pick_metric(TEST, "loss", "test") == 0.40
    with pytest.raises(UserError) as err:
        gate.evaluate_gate(
            GateConfig(metric="reward_accuracy", threshold=0.5), "reward_accuracy", "max", TEST
        )
    msg = str(err.value)
    assert "reward_accuracy" in msg and "accuracy, eval_examples, eval_loss, macro_f1" in msg
    assert "gate.metric" in msg


def test_baseline_check_reads_the_zero_shot_row() -> None:
    g = GateConfig(threshold=0.80, require_beat_baseline=True, min_improvement=0.1)
    d = gate.evaluate_gate(g, "accuracy", "max", TEST, baselines=BASELINES)
    base = d["checks"][1]
    assert d["passed"] and base["name"] == "beat_baseline" and base["other"] == 0.61
    assert base["margin"] == pytest.approx(0.82 - 0.61 - 0.1)
    d = gate.evaluate_gate(
        g.model_copy(update={"min_improvement": 0.3}), "accuracy", "max", TEST, BASELINES
    )
    assert not d["passed"] and d["failed"] == ["beat_baseline"]
    assert d["checks"][1]["margin"] == pytest.approx(0.82 - 0.61 - 0.3)
    with pytest.raises(UserError, match="baselines.enabled"):
        gate.evaluate_gate(g, "accuracy", "max", TEST, baselines=None)
    with pytest.raises(UserError, match="zero-shot baseline"):
        gate.evaluate_gate(
            g, "eval_loss", "min", TEST, baselines=BASELINES
        )  # baselines have no loss


def test_current_release_comparison() -> None:
    g = GateConfig(require_beat_current=True)
    first = gate.evaluate_gate(g, "accuracy", "max", TEST, current=None)
    c = first["checks"][0]
    assert first["passed"] and c["margin"] is None and "nothing to beat" in c["detail"]
    fp = {"rows": 50, "sha256": "aa"}
    worse = {"version": "v3", "test": {"accuracy": 0.90}, "test_data": fp}
    d = gate.evaluate_gate(g, "accuracy", "max", TEST, current=worse, test_data=fp)
    c = d["checks"][0]
    assert not d["passed"] and c["other"] == 0.90 and c["margin"] == pytest.approx(-0.08)
    assert "v3" in c["detail"] and "note" not in c
    d = gate.evaluate_gate(
        g,
        "accuracy",
        "max",
        TEST,
        current={
            "version": "v3",
            "test": {"accuracy": 0.7},
            "test_data": {"rows": 40, "sha256": "bb"},
        },
        test_data=fp,
    )
    assert d["passed"] and "other test data (40 rows vs 50" in d["checks"][0]["note"]
    with pytest.raises(UserError, match="current release v3"):
        gate.evaluate_gate(g, "macro_f1", "max", TEST, current=worse)


def test_gate_needs_a_condition_and_test_metrics() -> None:
    with pytest.raises(UserError, match="no condition"):
        gate.evaluate_gate(GateConfig(), "accuracy", "max", TEST)
    with pytest.raises(UserError, match="data.split.test"):
        gate.evaluate_gate(GateConfig(threshold=0.5), "accuracy", "max", {})


def test_all_checks_reported_and_markdown_says_by_how_much() -> None:
    g = GateConfig(threshold=0.9, require_beat_baseline=True, require_beat_current=True)
    d = gate.evaluate_gate(
        g, "accuracy", "max", TEST, BASELINES, {"version": "v1", "test": {"accuracy": 0.85}}
    )
    assert [c["name"] for c in d["checks"]] == ["threshold", "beat_baseline", "beat_current"]
    assert d["failed"] == ["threshold", "beat_current"] and not d["passed"]
    md = gate.gate_markdown(d, "runs/x")
    assert md.startswith("# Release gate: REFUSED") and "nothing was released" in md
    assert "| threshold | FAIL | 0.8200 | 0.9000 | -0.0800 |" in md
    assert "| beat_baseline | pass | 0.8200 | 0.6100 | +0.2100 |" in md
    assert "short by 0.0300" in md


def test_preflight_reports_every_problem_before_training(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.train=x.jsonl",
            "data.split.test=0",
            "gate.require_beat_baseline=true",
            "gate.metric=eval_loss",
            f"run.output_dir={tmp_path / 'run'}",
            f"gate.registry={tmp_path / 'run'}",
        ],
    )
    with pytest.raises(UserError) as err:
        preflight(cfg)
    msg = str(err.value)
    for needle in (
        "data.split.test",
        "baselines.enabled",
        "the gate metric is eval_loss",
        "must not be the run folder",
    ):
        assert needle in msg, needle
    cfg = load_config(
        None, ["data.train=x.jsonl", "data.split.test=0.2", f"gate.registry={tmp_path / 'reg'}"]
    )
    with pytest.raises(UserError, match="no condition"):
        preflight(cfg)
    preflight(
        load_config(
            None,
            [
                "data.train=x.jsonl",
                "data.split.test=0.2",
                "gate.threshold=0.5",
                f"gate.registry={tmp_path / 'reg'}",
            ],
        )
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        preflight(
            load_config(
                None,
                ["data.test=t.jsonl", "gate.threshold=0.5", f"gate.registry={tmp_path / 'file'}"],
            )
        )


def test_fingerprint_ignores_row_order_and_origin(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    (b / "data").mkdir(parents=True)
    (a / "data" / "test.jsonl").write_text(
        '{"text": "x", "label": "1", "_source": "a.jsonl:1"}\n{"text": "y", "label": "0"}\n'
    )
    (b / "data" / "test.jsonl").write_text(
        '{"text": "y", "label": "0"}\n{"label": "1", "text": "x", "_source": "b.jsonl:9"}\n'
    )
    fa, fb = fingerprint_test_split(a), fingerprint_test_split(b)
    assert fa == fb and fa["rows"] == 2
    (b / "data" / "test.jsonl").write_text(
        '{"text": "y", "label": "1"}\n{"text": "x", "label": "1"}\n'
    )
    assert fingerprint_test_split(b)["sha256"] != fa["sha256"]
    assert fingerprint_test_split(tmp_path) is None
