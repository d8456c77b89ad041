"""Nothing changes the user's data silently: PII is detected (not rewritten) by default, every
stage that drops or changes rows says so on the console and in data_report.md, late rejects
(eval labels train lacks, tokenization) count where they happened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmtune.config import Config
from lmtune.data.encode import encode_split
from lmtune.data.pipeline import prepare_data
from lmtune.data.trainset import report_rejects
from lmtune.errors import UserError
from lmtune.tasks.base import Task
from lmtune.train.run import report_ragged_tail


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _cfg(data: dict, task: str = "classification", **extra: Any) -> Config:
    return Config.model_validate({"task": task, "data": data, **extra})


def _sft(n: int) -> list[dict]:
    return [
        {
            "instruction": f"How do I reach support about order {i}?",
            "output": f"Write to help{i}@example.com or see https://example.com/o/{i}.",
        }
        for i in range(n)
    ]


def test_pii_is_detected_and_reported_not_rewritten_by_default(tmp_path: Path) -> None:
    rows = _sft(12) + _sft(3)  # three exact duplicates too
    cfg = _cfg({"train": _jsonl(tmp_path / "t.jsonl", rows), "split": {"eval": 0.0}}, task="sft")
    said: list[str] = []
    out = prepare_data(cfg, tmp_path / "run", say=said.append)
    written = [json.loads(x) for x in (tmp_path / "run/data/train.jsonl").read_text().splitlines()]
    assert {r["output"] for r in written} == {r["output"] for r in rows}  # untouched
    pii = out.report["pii"]
    assert pii["found"] == {"email": 15, "url": 15} and pii["rows"] == 15  # before dedupe
    assert pii["examples"][0] == {"row": "t.jsonl:1", "kinds": {"email": 1, "url": 1}}
    assert out.report["redactions"] == {}
    line = next(s for s in said if s.startswith("personal data"))
    assert "email 15, url 15" in line and "t.jsonl:1" in line and "pii: redact" in line
    dedupe = next(s for s in said if s.startswith("dedupe:"))
    assert "dropped 3 row(s)" in dedupe and "rejects.jsonl" in dedupe
    md = (tmp_path / "run/data_report.md").read_text()
    assert "## Personal data and secrets" in md and "| email | 15 |" in md
    assert "- t.jsonl:1: email 1, url 1" in md


def test_pii_redact_rewrites_and_says_so(tmp_path: Path) -> None:
    cfg = _cfg(
        {
            "train": _jsonl(tmp_path / "t.jsonl", _sft(10)),
            "split": {"eval": 0.0},
            "clean": {"pii": "redact"},
        },
        task="sft",
    )
    said: list[str] = []
    out = prepare_data(cfg, tmp_path / "run", say=said.append)
    assert all("[EMAIL]" in r["output"] for r in out.splits["train"])
    assert out.report["redactions"]["email"] == 10
    assert any(s.startswith("redacted personal data/secrets: email 10") for s in said)


def test_pii_bool_config_keeps_old_meaning() -> None:
    assert _cfg({"clean": {"pii": True, "secrets": False}}).data.clean.pii == "redact"
    assert _cfg({"clean": {"secrets": False}}).data.clean.secrets == "off"


def test_eval_labels_missing_from_train_obey_max_bad_fraction(tmp_path: Path) -> None:
    train = [{"text": f"row {i} text", "label": "ab"[i % 2]} for i in range(20)]
    evals = [{"text": f"eval {i} text", "label": "abc"[i % 3]} for i in range(9)]
    data = {
        "train": _jsonl(tmp_path / "t.jsonl", train),
        "eval": _jsonl(tmp_path / "e.jsonl", evals),
    }
    with pytest.raises(UserError, match=r"e\.jsonl: 3 of 9 rows .*eval split"):
        prepare_data(_cfg(data), tmp_path / "run")
    out = prepare_data(_cfg({**data, "max_bad_fraction": 0.5}), tmp_path / "run2")
    entry = next(i for i in out.report["inputs"] if i["split"] == "eval")
    assert entry["rows_rejected"] == 3
    md = (tmp_path / "run2/data_report.md").read_text()
    assert "| eval | " + data["eval"] + " | 9 | 3 |" in md


def test_labels_written_two_ways_are_merged_with_a_warning(tmp_path: Path) -> None:
    rows = [{"text": f"row {i} text", "label": [1, "1", 0][i % 3]} for i in range(12)]
    cfg = _cfg({"train": _jsonl(tmp_path / "t.jsonl", rows), "split": {"eval": 0.0}})
    said: list[str] = []
    out = prepare_data(cfg, tmp_path / "run", say=said.append)
    assert out.labels == ["0", "1"]
    warning = next(w for w in out.report["warnings"] if "merged" in w)
    assert "1 (4 rows)" in warning and '"1" (4 rows)' in warning
    assert "merged into one label '1'" in (tmp_path / "run/data_report.md").read_text()
    assert any("merged" in s for s in said)


class _Task(Task):
    """A task whose encode rejects long rows, as a causal task does past max_length."""

    def encode(self, row: dict) -> dict:
        if len(row["text"]) > 12:
            raise ValueError(f"prompt has {len(row['text'])} tokens, above model.max_length 12")
        return {"input_ids": [1, 2]}


def test_tokenization_rejects_and_ragged_tail_reach_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [{"text": "short " + str(i), "label": "a"} for i in range(11)]
    rows += [{"text": "a much longer row " + str(i), "label": "b"} for i in range(2)]
    cfg = _cfg(
        {"train": _jsonl(tmp_path / "t.jsonl", rows), "split": {"eval": 0.0}},
        train={"batch_size": 2, "grad_accum": 2},
    )
    run = tmp_path / "run"
    out = prepare_data(cfg, run, say=None)
    assert "No rows were dropped." in (run / "data_report.md").read_text()
    feats, rejected = encode_split(_Task(), out.splits["train"], run / "encoded")
    report_rejects(rejected, run / "rejects.jsonl", len(out.splits["train"]))
    report_ragged_tail(cfg, len(feats), run)
    printed = capsys.readouterr().out
    assert "tokenize: dropped 2 row(s)" in printed
    assert "leaves out 3 of 11 training examples" in printed
    md = (run / "data_report.md").read_text()
    assert "No rows were dropped." not in md
    assert "| tokenize | prompt has N tokens, above model.max_length N | 2 |" in md
    assert "Each epoch leaves out 3 of 11 training examples" in md
    tok = json.loads((run / "data_report.json").read_text())["tokenize"]
    assert tok["rejected"] == 2 and tok["ragged_tail"] == 3 and tok["step_batch"] == 4
