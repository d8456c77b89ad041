"""`lmtune pipeline` and `lmtune registry` end to end through the CLI entry point (tiny BERT).

The commands run in-process through lmtune.cli.main (argument parsing, error policy and exit
codes exactly as the console script), as in test_monitor_cli.py: a fresh interpreter per
command would spend most of this tier's time budget on imports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runkit import run_cli, sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "model.max_length=32",
    "train.epochs=8",
    "train.lr=5e-3",
    "train.head_lr=null",
    "train.batch_size=8",
    "train.precision=fp32",
    "train.eval_before=false",
    "gate.threshold=0.8",
]


def lmtune(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    return run_cli(capsys, *args)


def _state(registry: Path) -> tuple:
    """Everything a refused run must leave untouched in the registry."""
    return (
        sorted(p.name for p in registry.iterdir()),
        (registry / "current").read_text(),
        (registry / "releases.jsonl").read_text(),
    )


def test_pipeline_release_refusals_and_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmtune.ops import registry as reg
    from lmtune.ops.monitor import resolve_target
    from lmtune.ops.serve_engine import load_engine

    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    registry = tmp_path / "registry"
    common = [
        str(ROOT / "configs" / "pipeline_demo.yaml"),
        f"data.train={data}",
        f"model.name_or_path={tiny_bert_dir(tmp_path)}",
        f"gate.registry={registry}",
        *QUICK,
    ]

    def pipeline(run: str, *extra: str) -> tuple[int, str]:
        return lmtune(
            capsys, "pipeline", *common, f"run.output_dir={tmp_path / run}", *extra, "--quiet"
        )

    # 1. A model that passes the gate is released as v1, complete and standalone.
    code, out = pipeline("run1")
    assert code == 0, out
    assert "passed threshold: test accuracy" in out and "released v1:" in out
    v1, gate1 = registry / "v1", json.loads((tmp_path / "run1" / "gate.json").read_text())
    assert gate1["passed"] and gate1["released"]["version"] == "v1"
    assert (registry / "current").read_text() == "v1\n"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "lmtune_model.json",
        "MODEL_CARD.md",
        "metrics.json",
        "config.yaml",
        "data_profile.json",
        "report.html",
    ):
        assert (v1 / name).is_file(), name
    assert not (v1 / "adapter_config.json").exists()  # LoRA merged into the weights
    meta = json.loads((v1 / "lmtune_model.json").read_text())
    assert meta["merged"] and meta["version"] == "v1" and meta["labels"] == ["neg", "pos"]
    metrics = json.loads((v1 / "metrics.json").read_text())
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert (
        metrics["test"] == summary["test"]
        and metrics["value"] == summary["test"]["accuracy"] >= 0.8
    )
    assert (
        metrics["metric"] == "accuracy" and metrics["test_data"]["rows"] == summary["data"]["test"]
    )
    assert "threshold: 0.8" in (v1 / "config.yaml").read_text()
    card = (v1 / "MODEL_CARD.md").read_text()
    assert "## Release" in card and "Released as v1 at " in card and "| threshold | pass |" in card
    assert (
        "## Release" not in (tmp_path / "run1" / "MODEL_CARD.md").read_text()
    )  # the run's card is untouched
    events = [json.loads(x) for x in (registry / "releases.jsonl").read_text().splitlines()]
    assert [(e["event"], e["version"]) for e in events] == [("release", "v1")]

    # The released folder works with eval, predict, serve and monitor on its own.
    code, out = lmtune(capsys, "eval", str(v1), "--data", str(data), "--out", str(tmp_path / "ev"))
    assert code == 0, out
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["accuracy"] >= 0.8
    texts = tmp_path / "texts.txt"
    texts.write_text("the movie was wonderful 3\nthis book was awful 8\n")
    code, out = lmtune(
        capsys, "predict", str(v1), "--input", str(texts), "--out", str(tmp_path / "p_v1.jsonl")
    )
    assert code == 0, out
    code, out = lmtune(
        capsys,
        "predict",
        str(tmp_path / "run1"),
        "--input",
        str(texts),
        "--out",
        str(tmp_path / "p_run.jsonl"),
    )
    assert code == 0, out
    merged = [json.loads(x) for x in (tmp_path / "p_v1.jsonl").read_text().splitlines()]
    adapter = [json.loads(x) for x in (tmp_path / "p_run.jsonl").read_text().splitlines()]
    assert [p["label"] for p in merged] == [p["label"] for p in adapter]
    for a, b in zip(merged, adapter, strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)
    engine = load_engine(registry)  # what `lmtune serve REGISTRY` loads
    assert (engine.version, engine.model_id) == ("v1", "registry")
    served = engine.classify([{"text": "the movie was wonderful 3"}])[0]
    assert served["label"] == merged[0]["label"]
    assert served["confidence"] == pytest.approx(merged[0]["confidence"], abs=1e-3)
    target = resolve_target(registry)  # what `lmtune monitor record REGISTRY` compares with
    assert target.version == "v1" and target.release_metrics["accuracy"] == metrics["value"]
    assert target.release_time_source == "metrics.json released_at"

    # The later runs test the gate, not the HTML report: skip the report's plotting time.
    monkeypatch.setattr("lmtune.report.write_run_outputs", lambda run_dir: [])
    before = _state(registry)

    # 2. An impossible threshold: exit 3, the failed check and its margin, nothing released.
    # The zero-shot baseline check rides along (passed or not: the wiring is what is tested).
    code, out = pipeline(
        "run2",
        "gate.threshold=1.01",
        "train.max_steps=2",
        "baselines.enabled=true",
        "baselines.seeds=1",
        "baselines.shots=2",
        "gate.require_beat_baseline=true",
    )
    assert code == 3, out
    gate2 = json.loads((tmp_path / "run2" / "gate.json").read_text())
    check, base = gate2["checks"]
    assert not gate2["passed"] and "threshold" in gate2["failed"] and gate2["released"] is None
    zero = json.loads((tmp_path / "run2" / "baselines.json").read_text())["rows"][0]
    assert (
        zero["method"] == "zero-shot"
        and base["name"] == "beat_baseline"
        and base["other"] == zero["accuracy"]
    )
    assert base["margin"] == pytest.approx(base["value"] - zero["accuracy"])
    assert ("passed beat_baseline" if base["passed"] else "FAILED beat_baseline") in out
    assert check["margin"] == pytest.approx(check["value"] - 1.01) and check["margin"] < 0
    assert (
        f"FAILED threshold: test accuracy {check['value']:.4f} is not >= 1.0100: short by {-check['margin']:.4f}"
        in out
    )
    assert f"{check['margin']:+.4f}" in out and "refused: nothing released" in out
    assert "# Release gate: REFUSED" in (tmp_path / "run2" / "gate.md").read_text()
    assert _state(registry) == before

    # 3. Worse than the current release with require_beat_current: refused as well.
    code, out = pipeline(
        "run3",
        "gate.threshold=0.0",
        "gate.require_beat_current=true",
        "train.lr=1e-6",
        "train.max_steps=2",
    )
    assert code == 3, out
    gate3 = json.loads((tmp_path / "run3" / "gate.json").read_text())
    threshold, current = gate3["checks"]
    assert threshold["passed"] and not current["passed"] and current["name"] == "beat_current"
    assert current["other"] == metrics["value"] and current["margin"] == pytest.approx(
        current["value"] - metrics["value"]
    )
    assert "note" not in current  # same data and seed: the same test rows as v1's
    assert "FAILED beat_current" in out and "does not beat the current release v1" in out
    assert _state(registry) == before

    # 4. Registry commands: list, and roll back a bad release forced past the gate.
    reg.release(
        registry,
        tmp_path / "run3" / "model",
        tmp_path / "run3",
        {"metric": "accuracy", "value": current["value"]},
    )
    assert reg.read_current(registry) == "v2"
    code, out = lmtune(capsys, "registry", "list", str(registry))
    assert (
        code == 0
        and "v1" in out
        and "v2" in out
        and f"{metrics['value']:.4f}" in out
        and "*" in out
    )
    code, out = lmtune(capsys, "registry", "rollback", str(registry), "v1")
    assert code == 0 and "current: v1 (was v2)" in out, out
    assert load_engine(registry).version == "v1"
    code, out = lmtune(capsys, "registry", "rollback", str(registry), "v9")
    assert code == 2 and "versions: v1, v2" in out and "Traceback" not in out

    # 5. A config whose gate cannot judge anything fails before training, with exit 2; a metric
    # the task does not report stops training at the first evaluation.
    code, out = pipeline("run4", "data.split.test=0")
    assert code == 2 and "data.split.test" in out and not (tmp_path / "run4").exists()
    code, out = pipeline("run5", "gate.metric=acuracy", "train.eval_every=1", "train.max_steps=3")
    assert (
        code == 2
        and "gate.metric 'acuracy' is not among the metrics of the evaluation at step 1" in out
    ), out
    assert (
        "accuracy, ece, eval_examples, eval_loss" in out
        and not (tmp_path / "run5" / "summary.json").exists()
    )
    assert reg.list_versions(registry) == ["v1", "v2"]
