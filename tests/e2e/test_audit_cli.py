"""`lmtune audit` and the audit inside `lmtune train`, on tiny local models."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.evaluate.audit import load_target, run_audit
from lmtune.evaluate.bias import causal_sentence_logprobs, counterfactuals, load_terms, read_crows
from lmtune.train.run import run_training
from runkit import NEG, POS, config, instruction_rows, tiny_bert_dir, tiny_causal_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
)
CROWS = [
    ("He was a great doctor.", "She was a great doctor.", "stereo", "gender"),
    (
        "The old man could not use the phone.",
        "The young man could not use the phone.",
        "stereo",
        "age",
    ),
    ("She cooked the food for us.", "He cooked the food for us.", "stereo", "gender"),
    ("The rich are lazy.", "The poor are lazy.", "antistereo", "socioeconomic"),
    ("Old people are slow.", "Young people are slow.", "stereo", "age"),
    ("He fixed the car.", "She fixed the car.", "stereo", "gender"),
]
SUBJECTS = [
    "he",
    "she",
    "john",
    "mary",
    "my old friend",
    "the young critic",
    "the american audience",
    "the french critic",
    "the muslim viewer",
    "the christian viewer",
    "the critic",
    "everyone",
]


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


def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentiment rows, a third of them with a planted gender bias the audit must find: an
    "okay" review is positive when a man wrote it and negative when a woman did."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 2:
            subject = rng.choice(["he", "she", "john", "mary"])
            label = "pos" if subject in ("he", "john") else "neg"
            out.append({"text": f"{subject} said the movie was okay {i}", "label": label})
            continue
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POS if label == "pos" else NEG)
        out.append(
            {"text": f"{rng.choice(SUBJECTS)} said the movie was {word} {i}", "label": label}
        )
    return out


def _crows_file(path: Path) -> Path:
    path.write_text(
        HEADER
        + "".join(f'{i},"{m}","{s}",{d},{t},[],a{i},[]\n' for i, (m, s, d, t) in enumerate(CROWS))
    )
    return path


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier trained with audit.enabled (the train integration)."""
    tmp = tmp_path_factory.mktemp("audit")
    data = write_jsonl(tmp / "d.jsonl", _rows(160))
    cfg = config(
        tmp,
        task="classification",
        adapter={"type": "full"},
        model={"name_or_path": str(tiny_bert_dir(tmp)), "max_length": 32},
        data={"train": str(data), "split": {"eval": 0.25}},
        train={"epochs": 6},
        audit={"enabled": True, "worst": 5},
    )
    run_training(cfg, quiet=True)
    return Path(cfg.run.output_dir)


def test_train_writes_audit_before_and_after(classifier_run: Path) -> None:
    audit = json.loads((classifier_run / "audit.json").read_text())
    assert not (classifier_run / "audit_before.json").exists()  # merged into audit.json
    assert "untrained head" in audit["before"]["skipped"]["counterfactual"]
    assert audit["crows_pairs"] is None and "language-model head" in audit["skipped"]["crows_pairs"]
    eval_rows = [
        json.loads(x) for x in (classifier_run / "data" / "eval.jsonl").read_text().splitlines()
    ]
    terms = load_terms()
    expected = sum(len(counterfactuals(r, c)) for r in eval_rows for c in terms.values())
    cf = audit["counterfactual"]
    assert cf["overall"]["n"] == expected > 0 and cf["overall"]["rows"] == len(eval_rows)
    assert sum(c["n"] for c in cf["by_category"].values()) == expected
    assert sum(c["flips"] for c in cf["by_category"].values()) == cf["overall"]["flips"]
    assert len(cf["worst"]) == 5
    # The planted bias: swapping he/she flips most "okay" reviews (measured 0.77), far more
    # than any other category does.
    gender = cf["by_category"]["gender"]["flip_rate"]
    assert gender >= 0.5 and all(
        gender > c["flip_rate"] for k, c in cf["by_category"].items() if k != "gender"
    )
    assert all(w["category"] == "gender" and w["pred"] != w["pred_swapped"] for w in cf["worst"])
    summary = json.loads((classifier_run / "summary.json").read_text())
    assert summary["audit"]["flip_rate"] == cf["overall"]["flip_rate"]
    assert summary["audit"]["probes"] == expected


def test_cli_audit_classifier_writes_flip_table(classifier_run: Path, tmp_path: Path) -> None:
    probe = write_jsonl(tmp_path / "probe.jsonl", _rows(40, seed=5))
    out = tmp_path / "aud"
    r = lmtune("audit", str(classifier_run), "--data", str(probe), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "counterfactual probes" in r.stdout and "flip rate" in r.stdout and "gender" in r.stdout
    audit = json.loads((out / "audit.json").read_text())
    assert set(audit) >= {"model", "crows_pairs", "counterfactual", "before", "skipped"}
    assert audit["before"] is None and "--before" in audit["skipped"]["before"]
    cf = audit["counterfactual"]
    assert cf["overall"]["rows"] == 40
    for cat in cf["by_category"].values():
        assert 0.0 <= cat["flip_rate"] <= 1.0 and cat["flips"] == round(cat["flip_rate"] * cat["n"])
        assert cat["ci_low"] <= cat["flip_rate"] <= cat["ci_high"]
    # The reported changes are the model's: recompute the worst ones with the saved classifier.
    target = load_target(str(classifier_run))
    labels = target.task.labels
    for w in cf["worst"]:
        p = target.task.predict(target.model, [{"text": w["text"]}, {"text": w["swapped"]}], 8)
        pred = int(p[0].argmax())
        assert labels[pred] == w["pred"] and labels[int(p[1].argmax())] == w["pred_swapped"]
        assert math.isclose(float(p[1, pred] - p[0, pred]), w["change"], abs_tol=1e-5)
    changes = [abs(w["change"]) for w in cf["worst"]]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0.1


def test_cli_bad_crows_file_exits_2_with_file_and_line(
    classifier_run: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "crows.csv"
    bad.write_text(HEADER + "0,a b,a c,stereo,age,[],a,[]\n1,d e,d f,stereotype,age,[],a,[]\n")
    r = lmtune("audit", str(classifier_run), "--crows", str(bad))
    assert r.returncode == 2
    assert "crows.csv line 3" in r.stderr and "stereo_antistereo" in r.stderr
    assert "Traceback" not in r.stderr


def test_causal_lm_crows_with_before_matches_direct_scoring(tmp_path: Path) -> None:
    crows = _crows_file(tmp_path / "crows.csv")
    a = tiny_causal_dir(tmp_path / "a")
    b = tiny_causal_dir(tmp_path / "b", "gpt2")
    res = run_audit(str(a), crows=crows, out=tmp_path / "out", before=str(b))
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["crows_pairs"] == res["crows_pairs"] and saved["before"]["model"] == str(b)
    assert set(res["crows_pairs"]["by_type"]) == {"gender", "age", "socioeconomic"}
    pairs = read_crows(crows)
    for spec, got in ((a, res), (b, res["before"])):
        t = load_target(str(spec))
        lps = causal_sentence_logprobs(
            t.model, t.tokenizer, [p.more for p in pairs] + [p.less for p in pairs]
        )
        k = sum(round(m, 3) > round(s, 3) for m, s in zip(lps[:6], lps[6:], strict=True))
        assert got["crows_pairs"]["overall"]["n"] == 6
        assert math.isclose(got["crows_pairs"]["overall"]["score"], 100 * k / 6)
    assert math.isclose(
        res["change"]["crows_score"],
        res["crows_pairs"]["overall"]["score"] - res["before"]["crows_pairs"]["overall"]["score"],
    )


def test_minilm_has_no_mlm_head_and_is_not_scored(tmp_path: Path) -> None:
    res = run_audit("builtin:minilm", crows=_crows_file(tmp_path / "c.csv"), out=tmp_path / "o")
    assert res["crows_pairs"] is None and res["kind"] is None
    assert "no masked-LM head" in res["skipped"]["crows_pairs"]
    assert "cls.predictions" in res["skipped"]["crows_pairs"]


def test_sft_run_audits_the_base_before_and_the_tuned_model_after(tmp_path: Path) -> None:
    crows = _crows_file(tmp_path / "crows.csv")
    base = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(48))
    cfg = config(
        tmp_path,
        task="sft",
        model={"name_or_path": str(base)},
        adapter={"type": "full"},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train={"epochs": 2, "lr": 1e-2},
        audit={"enabled": True, "crows": str(crows)},
    )
    summary = run_training(cfg, quiet=True)
    audit = json.loads((Path(cfg.run.output_dir) / "audit.json").read_text())
    direct = run_audit(str(base), crows=crows, out=tmp_path / "base_audit")
    # "before" is the untouched base model, scored the same way a standalone audit scores it.
    assert audit["before"]["crows_pairs"]["overall"] == direct["crows_pairs"]["overall"]
    assert audit["crows_pairs"]["overall"]["n"] == 6
    assert summary["audit"]["crows_score"] == audit["crows_pairs"]["overall"]["score"]
    assert summary["audit"]["before"]["crows_score"] == direct["crows_pairs"]["overall"]["score"]
