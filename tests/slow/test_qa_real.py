"""Opt-in real-data QA runs (pytest -m slow): builtin:minilm on XQuAD-en and SQuAD 2.0 subsets.

Both runs keep whole articles apart: XQuAD is split by title (no eval article in training);
the SQuAD 2.0 run evaluates on the Rhine article only and trains on other articles (the
Normans article is in both SQuAD 2.0 files, so it is never evaluated on).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.train.run import run_training
from runkit import SHARED_DATA as DATA
from runkit import needs_data

ROOT = Path(__file__).resolve().parents[2]
XQUAD = DATA / "xquad_en" / "xquad.en.json"
V2 = DATA / "squad_v2_dev_subset"

pytestmark = [pytest.mark.slow, needs_data("xquad_en/xquad.en.json", "squad_v2_dev_subset")]


@pytest.mark.timeout(3600)
def test_xquad_minilm_held_out_articles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config as it is: 80% of the articles train, the other 20% evaluate."""
    monkeypatch.chdir(ROOT)  # the config's ../shared/data path is relative to the repo
    cfg = load_config(
        ROOT / "configs" / "qa_xquad_minilm.yaml", [f"run.output_dir={tmp_path / 'run'}"]
    )
    summary = run_training(cfg, quiet=True)
    run = Path(cfg.run.output_dir)
    titles = {
        s: {json.loads(x)["title"] for x in (run / "data" / f"{s}.jsonl").read_text().splitlines()}
        for s in ("train", "eval")
    }
    assert not titles["train"] & titles["eval"]
    best, before = summary["best_eval"], summary["eval_before"]["eval"]
    print(
        json.dumps(
            {
                "data": summary["data"],
                "eval_articles": len(titles["eval"]),
                "exact": best["exact"],
                "f1": best["f1"],
                "before": {"exact": before["exact"], "f1": before["f1"]},
                "train_runtime_s": summary["train_runtime_s"],
            }
        )
    )
    # Measured here: see the README "Quality" table; the floors sit a little below.
    assert best["f1"] >= FLOOR_XQUAD_F1, best
    assert best["exact"] >= FLOOR_XQUAD_EM, best
    assert before["f1"] < 15.0  # the untrained span head is near chance


@pytest.mark.timeout(3600)
def test_squad_v2_subset_minilm_rhine_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQuAD 2.0 (unanswerable questions): evaluate on the Rhine article only.

    Training: the Normans + Computational_complexity_theory SQuAD 2.0 file, plus the XQuAD
    articles other than Normans, Rhine and Computational_complexity_theory (answerable only).
    The v2 file alone holds 293 answerable questions: too few, the model then learns to
    answer "no answer" everywhere (measured: F1 41.9 = the unanswerable share, HasAns 0).
    """
    monkeypatch.chdir(ROOT)
    source = json.loads((V2 / "squad_v2_dev_subset_normans_rhine.json").read_text())
    rhine = tmp_path / "rhine.json"  # derived files in tmp, never in the repository
    rhine.write_text(
        json.dumps(
            {"version": "v2.0", "data": [a for a in source["data"] if a["title"] == "Rhine"]}
        )
    )
    xquad = json.loads(XQUAD.read_text())
    shared = {"Normans", "Rhine", "Computational_complexity_theory"}
    other = tmp_path / "xquad_other_articles.json"
    other.write_text(
        json.dumps(
            {"version": "1.1", "data": [a for a in xquad["data"] if a["title"] not in shared]}
        )
    )
    train = V2 / "squad_v2_dev_subset_normans_complexity.json"
    cfg = load_config(
        ROOT / "configs" / "qa_xquad_minilm.yaml",
        [
            f"run.output_dir={tmp_path / 'run'}",
            f"data.train=[{other},{train}]",
            f"data.eval={rhine}",
            "run.name=qa-squad2-minilm",
            "train.epochs=2",
            "train.eval_before=false",
        ],
    )
    summary = run_training(cfg, quiet=True)
    best = summary["best_eval"]
    meta = json.loads((Path(summary["model_dir"]) / "lmtune_model.json").read_text())
    assert meta["qa"]["allow_no_answer"] is True  # learnt from the unanswerable questions
    # Rhine: 498 questions, 208 unanswerable; 2 answerable ones are exact duplicates (dropped).
    assert best["NoAns_total"] == 208 and best["HasAns_total"] + 208 == summary["data"]["eval"]
    print(
        json.dumps(
            {
                "data": summary["data"],
                **{
                    k: best[k]
                    for k in (
                        "exact",
                        "f1",
                        "HasAns_exact",
                        "HasAns_f1",
                        "NoAns_exact",
                        "best_f1",
                        "best_f1_thresh",
                    )
                },
                "train_runtime_s": summary["train_runtime_s"],
            }
        )
    )
    assert best["HasAns_f1"] >= FLOOR_V2_HASANS_F1, best
    # With the best null threshold it must beat answering "no answer" everywhere (41.9); the
    # measured margin is small (42.7), so no extra margin is asked for.
    assert best["best_f1"] > max(best["f1"], 100 * 208 / summary["data"]["eval"]), best


# Floors a little below one measured run each (README "Quality on real data" has the figures):
# XQuAD EM 30.6 / F1 43.9; SQuAD 2.0 Rhine HasAns F1 52.4.
FLOOR_XQUAD_EM, FLOOR_XQUAD_F1 = 25.0, 39.0
FLOOR_V2_HASANS_F1 = 48.0
