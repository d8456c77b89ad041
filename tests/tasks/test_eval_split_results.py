"""A default classifier run (an eval split, no test split) still leaves eval.json, errors,
per-class table, confusion matrix and calibration, from the eval split and saying so."""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.train.run import run_training
from runkit import config, sentiment_rows, tiny_bert_dir, write_jsonl


def test_without_test_split_results_come_from_eval(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "cls.jsonl", sentiment_rows(60))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(tiny_bert_dir(tmp_path)), "max_length": 24},
        adapter={"type": "full"},
        data={"train": str(data), "split": {"eval": 0.2}},
        train={"epochs": 1, "eval_before": False},
    )
    summary = run_training(cfg, quiet=True)
    run = Path(cfg.run.output_dir)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "eval" and ev["details"]["confusion_matrix"]["labels"] == ["neg", "pos"]
    assert "per_class" in ev["details"] and 0 <= ev["ece"] <= 1  # calibration error
    assert (run / "predictions.jsonl").is_file()  # the reliability diagram's input
    errors = (run / "errors.jsonl").read_text().splitlines()
    wrong = ev["details"]["confusion_matrix"]["matrix"]
    assert len(errors) == wrong[0][1] + wrong[1][0]
    assert all(json.loads(x)["gold"] != json.loads(x)["predicted"] for x in errors)
    assert "test" not in summary  # the release gate reads held-out test metrics only
    assert "from the eval split" in capsys.readouterr().out
    html = (run / "report.html").read_text()
    assert "eval split" in html
