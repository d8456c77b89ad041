"""report.html, its plots, calibration and MODEL_CARD.md on hand-made run and eval folders."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from lmtune.report import plots, write_model_card, write_report, write_run_outputs
from lmtune.report.calibration import expected_calibration_error, reliability_bins
from lmtune.report.collect import load_folder
from lmtune.report.sections import overfitting_messages
from reportkit import (
    BASELINES,
    EVAL,
    EVALS,
    PER_CLASS,
    TRAIN,
    dump,
    make_run,
    png_size,
    predictions,
)


def test_ece_matches_hand_computation() -> None:
    conf = [0.95, 0.88, 0.82, 0.58, 0.52, 0.33]
    ok = [True, True, False, True, False, False]
    # Bins (0.9,1]: acc 1 conf .95; (0.8,0.9]: acc .5 conf .85; (0.5,0.6]: acc .5 conf .55; (0.3,0.4]: acc 0 conf .33
    hand = (1 * 0.05 + 2 * 0.35 + 2 * 0.05 + 1 * 0.33) / 6
    assert expected_calibration_error(conf, ok) == pytest.approx(hand)
    bins = reliability_bins(conf, ok)
    assert [b["count"] for b in bins] == [0, 0, 0, 1, 0, 2, 0, 0, 2, 1]
    assert bins[8]["confidence"] == pytest.approx(0.85) and bins[8]["accuracy"] == 0.5
    # Edges: 1.0 is in the last bin, 0.0 in the first; a perfectly calibrated set has ECE 0.
    assert [b["count"] for b in reliability_bins([0.0, 1.0], [False, True])][::9] == [1, 1]
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([], []) == 0.0


# ------------------------------------------------------------------ plots


def test_every_plot_is_a_decodable_png() -> None:
    figs = {
        "loss_lr": plots.loss_lr_plot(TRAIN, EVALS),
        "eval": plots.eval_metrics_plot(EVALS),
        "extras": plots.train_extras_plot(
            [{**e, "reward": 0.1 * i, "kl": 0.01} for i, e in enumerate(TRAIN)]
        ),
        "cm": plots.confusion_matrix_plot(["neg", "pos"], [[7, 3], [1, 6]]),
        "reliability": plots.reliability_plot(
            reliability_bins([0.9, 0.7, 0.6], [True, False, True]), 0.2
        ),
        "per_class": plots.per_class_plot(PER_CLASS),
        "baselines": plots.baselines_plot(BASELINES["rows"]),
    }
    for name, png in figs.items():
        assert png is not None, name
        h, w = png_size(png)
        assert h > 150 and w > 250, (name, h, w)
    # A wider figure for more classes: the heatmap grows with the label count.
    many = plots.confusion_matrix_plot([f"c{i}" for i in range(12)], [[1] * 12 for _ in range(12)])
    assert png_size(many)[1] > png_size(figs["cm"])[1]


def test_plots_return_none_without_data() -> None:
    assert plots.loss_lr_plot([], []) is None
    assert plots.eval_metrics_plot(EVALS[:1]) is None  # one point is no curve
    assert plots.train_extras_plot(TRAIN) is None  # nothing beyond loss/lr/bookkeeping
    assert plots.confusion_matrix_plot(["a", "b"], [[1, 2]]) is None  # malformed matrix
    assert plots.reliability_plot(reliability_bins([], []), 0.0) is None
    assert plots.per_class_plot({}) is None
    assert plots.baselines_plot([{"method": "zero-shot"}]) is None


# ------------------------------------------------------------------ report.html


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(b)
        for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_on_a_full_run_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")
    # Every section, in page order, with the overfitting warning above them.
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == [
        "metrics",
        "curves",
        "per-class",
        "confusion",
        "calibration",
        "errors",
        "baselines",
        "forgetting",
        "bias",
        "summary",
        "data",
        "other",
        "config",
    ]
    assert page.index('class="box warn"') < page.index('<section id="metrics">')
    assert "eval loss rose over 3 evaluations" in page
    # Header: name, task, base model, headline tiles from eval.json.
    assert "<h1>tiny-sentiment</h1>" in page and "builtin:minilm" in page
    assert '<div class="v">0.8125</div><div class="k">accuracy</div>' in page
    # Metrics with the before-training value and the change, coloured.
    assert "0.4375" in page and 'class="num better">0.3750<' in page
    assert 'class="num better">-0.0800<' in page  # eval_loss fell: better
    # Per-class figures, confusion counts, calibration from predictions.jsonl.
    assert "0.8571" in page and "0.7778" in page
    assert re.search(r"<td>neg</td><td class=\"num \">7</td><td class=\"num \">3</td>", page)
    conf = [p["prob"] for p in predictions()]
    ok = [p["pred"] == p["label"] for p in predictions()]
    assert f"over 6 predictions: {expected_calibration_error(conf, ok):.4f}" in page
    # Baselines, forgetting, bias numbers as in their JSON files.
    assert "0.5312" in page and "0.6471" in page and "0.0433" in page
    assert "12.5000" in page and "14.2500" in page and "+14.0%" in page
    assert (
        "pseudo_perplexity went from 12.5000 to 14.2500 (lower is better): worse after fine-tuning"
        in page
    )
    assert "0.5821" in page and "0.5633" in page and "0.0417" in page and "she was great" in page
    # Unknown keys are shown generically, not dropped.
    assert (
        "shown generically" in page
        and "custom value" in page
        and "notes_from_a_new_stage.custom_key" in page
    )
    # Data section: sizes, drops, redactions.
    assert "empty text" in page and "email" in page
    # User text is escaped, never live markup.
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; the movie" in page
    # Plots: loss/LR, eval metrics, per-class, confusion, reliability, baselines: all real PNGs.
    pngs = images(page)
    assert len(pngs) == 6
    assert all(png_size(p)[0] > 100 for p in pngs)
    # Self-contained: no external resources.
    assert not re.search(r'(src|href)="(http|//)', page)


def test_report_omits_absent_sections(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    page = write_report(run).read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["metrics", "curves", "summary", "config"]
    assert 'class="box' not in page  # no overfitting entry: no box at all
    # Headline falls back to the best eval of the run.
    assert "best step 40" in page and '<div class="v">0.8125</div>' in page


def test_overfitting_box_when_nothing_flagged(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    summary = json.loads((run / "summary.json").read_text())
    dump(run / "summary.json", {**summary, "overfitting": {"flags": [], "evaluations": 4}})
    page = write_report(run).read_text(encoding="utf-8")
    assert 'class="box ok"' in page and "Possible overfitting" not in page


def test_overfitting_messages_of_several_shapes() -> None:
    assert overfitting_messages({"flags": ["large_gap: x"]}) == ["large_gap: x"]
    assert overfitting_messages({"flags": [{"message": "rising"}]}) == ["rising"]
    assert overfitting_messages({"eval_loss_rising": True, "gap": 0.3}) == ["eval loss rising"]
    assert overfitting_messages({"flags": [], "evaluations": 3}) == []


def test_report_on_eval_folders_classification_and_qa(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    ev = tmp_path / "ev"
    dump(
        ev / "eval.json",
        {
            "model": str(run / "model"),
            "data": "held_out.jsonl",
            "rows": 17,
            "rejected": 1,
            **{k: v for k, v in EVAL.items() if k != "split"},
        },
    )
    page = write_report(ev).read_text(encoding="utf-8")
    assert "evaluation · task" in page and "held_out.jsonl" in page and "tiny-sentiment" in page
    assert "per-class" in page and "curves" not in re.findall(r'<section id="([^"]+)">', page)
    qa = tmp_path / "qa"
    dump(
        qa / "eval.json",
        {
            "model": "elsewhere",
            "data": "xquad.json",
            "rows": 40,
            "exact": 61.25,
            "f1": 72.5,
            "HasAns_exact": 70.0,
            "NoAns_exact": 52.5,
            "total": 40.0,
        },
    )
    dump(qa / "predictions.json", {"q1": "Denver Broncos", "q2": "<b>bold</b>"})
    page = write_report(qa).read_text(encoding="utf-8")
    assert "61.2500" in page and "72.5000" in page and "HasAns_exact" in page and "52.5000" in page
    assert "Denver Broncos" in page and "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page


def test_report_refuses_a_folder_without_lmtune_files(tmp_path: Path) -> None:
    from lmtune.errors import UserError

    with pytest.raises(UserError, match="neither a run folder"):
        write_report(tmp_path)


def test_run_outputs_warn_instead_of_failing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "report.html").mkdir()  # a folder where the file must go: writing it fails
    with pytest.warns(RuntimeWarning, match="report.html was not written"):
        written = write_run_outputs(run)
    # The card is still written, into model/ and beside the run.
    assert written == [run / "model" / "MODEL_CARD.md", run / "MODEL_CARD.md"]
    assert (run / "MODEL_CARD.md").read_text() == (run / "model" / "MODEL_CARD.md").read_text()


# ------------------------------------------------------------------ MODEL_CARD.md


def test_model_card_from_the_run_files(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    card = write_model_card(run, run / "model").read_text(encoding="utf-8")
    for heading in (
        "## Model details",
        "## Training data",
        "## Training procedure",
        "## Evaluation",
        "## Baselines",
        "## Forgetting",
        "## Bias evaluation",
        "## Intended use",
        "## Limitations",
    ):
        assert heading in card, heading
    assert "| base model | builtin:minilm |" in card
    assert (
        "LoRA adapter (r 8, alpha 16" in card
        and "1,000 of 50,000 parameters trained (2.00%)" in card
    )
    assert "| train | reviews.jsonl | 120 | 2 |" in card  # file name, not the full path
    assert (
        "train 80, eval 21, test 17" in card and "test split off the train file with seed 1" in card
    )
    assert "email 3" in card and "| validate | empty text | 2 |" in card
    assert "| lr | 0.001 |" in card and "| batch_size | 8 |" in card
    assert "Measured on the test split (17 examples)" in card
    assert (
        "| accuracy | 0.8125 | 0.4375 |" in card
        and "| pos | 0.6667 | 0.8571 | 0.7500 | 7 |" in card
    )
    assert "| few-shot | 16 | 0.6471 | 0.0433 |" in card
    assert (
        "| before | 12.5000 |" in card
        and "| after | 14.2500 |" in card
        and "| rel_change | +14.0% |" in card
    )
    assert "| after fine-tuning | 0.5821 |" in card and "| before fine-tuning | 0.5633 |" in card
    assert "Inputs are cut to 64 tokens; the longest training row had 300." in card
    assert "eval loss rose over 3 evaluations" in card
    assert card.count("TO COMPLETE (model owner)") == 2


def test_model_card_says_what_was_not_measured(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    card = write_model_card(run, run / "model").read_text(encoding="utf-8")
    assert (
        "No bias audit was run" in card
        and "## Baselines" not in card
        and "## Forgetting" not in card
    )
    # Numbers only from the files: the best eval's accuracy, no invented interval without a count.
    assert "| accuracy | 0.8125 |" in card and "confidence interval" not in card


def test_load_folder_skips_damaged_lines_and_keeps_the_resumed_steps(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    with (run / "metrics.jsonl").open("a") as f:
        # Resumed from the step-30 checkpoint: steps 35 and 40 are logged again, then killed.
        f.write(
            json.dumps({**TRAIN[-2], "loss": 0.42})
            + "\n"
            + json.dumps({**TRAIN[-1], "loss": 0.41})
            + "\n"
        )
        f.write('{"event": "train", "step": 45, "loss"')  # a killed run's half-written last line
    folder = load_folder(run)
    assert [e["step"] for e in folder.train_events] == [e["step"] for e in TRAIN]
    assert [e["loss"] for e in folder.train_events][-2:] == [0.42, 0.41]
    assert len(folder.eval_events) == len(EVALS)


def test_counts_are_not_plotted_one_point_is_no_curve_and_the_title_is_never_run(
    tmp_path: Path,
) -> None:
    from lmtune.report.collect import is_count

    assert all(is_count(k) for k in ("eval_examples", "eval_tokens", "eval_pairs", "rows"))
    assert not any(is_count(k) for k in ("eval_loss", "pairwise_accuracy", "reward_margin"))
    evals = [
        {
            "event": "eval",
            "step": s,
            "eval_loss": 1.0 / s,
            "pairwise_accuracy": 0.5,
            "eval_pairs": 9,
        }
        for s in (1, 2)
    ]
    # Only the counts beside eval_loss: nothing to plot as an eval metric but the accuracy.
    assert (
        plots.eval_metrics_plot(
            [{k: v for k, v in e.items() if k != "pairwise_accuracy"} for e in evals]
        )
        is None
    )
    one = [{"event": "train", "step": 1, "loss": 2.0, "lr": 1e-4}]
    assert plots.loss_lr_plot(one, evals[:1]) is None  # a one-point chart is not drawn
    assert plots.loss_lr_plot(one, evals) is not None  # two evaluations are a curve
    assert plots.train_extras_plot([{"step": 1, "loss": 1.0, "reward": 0.3}]) is None
    run = tmp_path / "my-run-folder"
    run.mkdir()
    (run / "config.yaml").write_text("run: {name: run}\ntask: sft\n")
    assert load_folder(run).name == "my-run-folder"  # the default name says nothing
    (run / "config.yaml").write_text("run: {name: sft_alpaca_lora}\ntask: sft\n")
    assert load_folder(run).name == "sft_alpaca_lora"
    html = write_report(run).read_text()
    assert "<h1>sft_alpaca_lora</h1>" in html
