"""report.html and MODEL_CARD.md from `lmtune train` (real CLI), `lmtune report`, eval and export."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from runkit import (
    NEG,
    POS,
    instruction_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[2]


def lmtune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lmtune", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(b)
        for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_classification_run_writes_report_and_model_card(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(96))
    run = tmp_path / "run"
    r = lmtune(
        "train",
        "configs/demo.yaml",
        f"data.train={data}",
        f"model.name_or_path={model_dir}",
        f"run.output_dir={run}",
        "train.epochs=3",
        "train.lr=5e-3",
        "train.batch_size=8",
        "model.max_length=32",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "was not written" not in r.stderr
    ev = json.loads((run / "eval.json").read_text())
    preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == ev["eval_examples"] and 0.0 <= ev["ece"] <= 1.0
    assert all(
        abs(sum(p["probs"].values()) - 1) < 1e-4 and p["prob"] == max(p["probs"].values())
        for p in preds
    )

    page = (run / "report.html").read_text(encoding="utf-8")
    for section in (
        "metrics",
        "curves",
        "per-class",
        "confusion",
        "calibration",
        "summary",
        "data",
        "config",
    ):
        assert section in sections(page), section
    assert f"{ev['accuracy']:.4f}" in page and f"{ev['ece']:.4f}" in page
    assert len(pngs(page)) >= 5 and all(p[:4] == b"\x89PNG" for p in pngs(page))
    card = (run / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    # A local base is named as given, and the card says it is a local folder.
    assert f"| base model | {model_dir} (a local folder" in card and "LoRA adapter" in card
    assert (
        f"| accuracy | {ev['accuracy']:.4f} |" in card
        and f"({int(ev['eval_examples'])} examples)" in card
    )

    # `lmtune report` rebuilds both from the folder's files (the typer app in-process: a
    # subprocess would spend seconds importing torch for a command that never uses it).
    from typer.testing import CliRunner

    from lmtune.cli import app

    (run / "report.html").unlink()
    (run / "model" / "MODEL_CARD.md").unlink()
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and "MODEL_CARD.md" in res.output
    assert (run / "report.html").is_file() and (run / "model" / "MODEL_CARD.md").read_text() == card
    res = CliRunner().invoke(app, ["report", str(tmp_path)])  # not a run or eval folder
    assert res.exit_code != 0 and "neither a run folder" in str(res.exception)
    # The eval step writes its own report, and export carries the card (in-process: the CLI
    # wiring of both is covered by test_cli.py; a subprocess here would cost seconds of start-up).
    from lmtune.evaluate.run import run_eval
    from lmtune.models.export import export_merged

    ev2 = run_eval(run, data, tmp_path / "ev")
    page = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert (
        "evaluation · task" in page
        and f"{ev2['accuracy']:.4f}" in page
        and "confusion" in sections(page)
    )
    export_merged(run / "model", tmp_path / "merged")
    assert (tmp_path / "merged" / "MODEL_CARD.md").read_text() == card


def test_sft_run_writes_report_and_model_card(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    rows = instruction_rows(60)
    for row in rows:  # markup in the data must reach the page as text (samples show prompts)
        row["instruction"] = "<b>&" + row["instruction"]
    data = write_jsonl(tmp_path / "inst.jsonl", rows)
    run = tmp_path / "run"
    r = lmtune(
        "train",
        "configs/sft_alpaca_lora.yaml",
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        f"run.output_dir={run}",
        "model.max_length=96",
        "train.epochs=2",
        "train.lr=1e-2",
        "data.template=alpaca",
        "train.eval_every=2",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    page = (run / "report.html").read_text(encoding="utf-8")
    assert sections(page)[:2] == ["metrics", "curves"] and "confusion" not in sections(page)
    best = summary["best_eval"]
    # Without a test split the headline is the kept model on the eval split (eval.json).
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "eval" and f"{ev['perplexity']:.4f}" in page and "eval split" in page
    assert len(pngs(page)) == 2  # loss/LR and eval metrics over steps
    card = (run / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| task | sft |" in card and f"| perplexity | {best['perplexity']:.4f} |" in card
    assert (
        "lmtune generate MODEL_DIR" in card
        and "Loss of general ability (forgetting) was not measured" in card
    )
    # A few eval prompts answered before and after training, beside their reference answers.
    samples = json.loads((run / "samples.json").read_text(encoding="utf-8"))
    assert samples["split"] == "eval" and 1 <= len(samples["samples"]) <= 4
    assert "samples" in sections(page) and "<b>&" not in page
    for s in samples["samples"]:
        assert s["prompt"].startswith("<b>&Repeat the word") and s["reference"] in POS + NEG
        assert isinstance(s["before"], str) and isinstance(s["after"], str)
        for text in (s["prompt"], s["before"], s["after"]):
            assert html.escape(text) in page
