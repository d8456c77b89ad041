"""prepare_data end to end on small files: rejects, guard, leakage, labels, splits, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import Config
from lmtune.data.pipeline import prepare_data, read_rows
from lmtune.errors import UserError


def _jsonl(path: Path, rows: list) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def _cfg(data: dict, task: str = "classification", **extra) -> Config:
    return Config.model_validate({"task": task, "data": data, **extra})


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _good(n: int, labels=("pos", "neg")) -> list[dict]:
    return [
        {"text": f"example number {i} about topic {i * 7}", "label": labels[i % len(labels)]}
        for i in range(n)
    ]


def test_bad_rows_become_rejects_with_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "train.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"text": "fine one", "label": "pos"}\n')  # 1
        f.write(b'{"text": "no label"}\n')  # 2
        f.write(b'{"text": 42, "label": "neg"}\n')  # 3
        f.write(b'{"text": "   ", "label": "neg"}\n')  # 4
        f.write(b'{"text": "odd", "label": "maybe"}\n')  # 5
        f.write(b'{"text": "broken", \n')  # 6
        f.write(b'{"text": "bad \xff\xfe bytes", "label": "pos"}\n')  # 7
        f.write(b'{"text": "x", "label": ["pos"]}\n')  # 8
        for r in _good(12):
            f.write(json.dumps(r).encode() + b"\n")
    cfg = _cfg({"train": str(p), "labels": ["pos", "neg"], "max_bad_fraction": 0.5})
    out = prepare_data(cfg, tmp_path / "run")
    rejects = _read_jsonl(tmp_path / "run" / "rejects.jsonl")
    got = {r["line"]: r["reason"] for r in rejects}
    assert got[2] == "missing field 'label'"
    assert got[3] == "field 'text' must be a string, got int"
    assert got[4] == "field 'text' is empty"
    assert got[5] == "unknown label 'maybe' (allowed: pos, neg)"
    assert got[6].startswith("invalid JSON: ")
    assert got[7] == "undecodable bytes (not valid UTF-8) in field 'text'"
    assert got[8] == "field 'label' must be a string or number, got list"
    assert all(r["stage"] == "validate" and r["source"] == str(p) for r in rejects)
    assert rejects[0]["row"] == {"text": "no label"}
    assert "\ufffd" in next(r for r in rejects if r["line"] == 7)["row"]["text"]
    assert out.report["inputs"][0] == {
        "split": "train",
        "file": str(p),
        "rows_read": 20,
        "rows_rejected": 7,
    }
    assert out.labels == ["pos", "neg"]
    assert all(r["_source"].startswith("train.jsonl:") for r in out.splits["train"])


def test_bad_fraction_guard(tmp_path: Path) -> None:
    rows = _good(7) + [{"text": "a"}, {"text": "b"}, {"label": "pos"}]
    p = _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(UserError) as e:
        prepare_data(_cfg({"train": p}), tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith(
        f"{p}: 3 of 10 rows (30.0%) are invalid, above "
        "data.max_bad_fraction=0.1. First problems: line 8: missing field "
        "'label'; line 9: missing field 'label'; line 10: missing field 'text'."
    )
    assert f"Rejected rows are in {tmp_path / 'run' / 'rejects.jsonl'}" in msg
    assert "data.columns" in msg
    assert len(_read_jsonl(tmp_path / "run" / "rejects.jsonl")) == 3


def test_report_counts_add_up(tmp_path: Path) -> None:
    base = "the committee discussed the annual budget for the city library and parks " * 3
    rows = _good(40, labels=("a", "b", "c", "c")) + [
        {"text": "example number 1 about topic 7", "label": "b"},  # exact dup of row 1
        {"text": "example number 2 about topic 14", "label": "a"},  # conflicts with row 2
        {"text": base, "label": "a"},
        {"text": base + "again", "label": "a"},  # near dup
        {"text": "x" * 500, "label": "a"},  # too long
        {"label": "a"},  # invalid
        {"text": "mail me at someone@example.com please", "label": "b"},
    ]
    p = _jsonl(tmp_path / "t.jsonl", rows)
    cfg = _cfg(
        {
            "train": p,
            "max_bad_fraction": 0.2,
            "split": {"eval": 0.2, "test": 0.1},
            "clean": {"max_chars": 300, "near_dedupe": {"enabled": True}, "pii": "redact"},
            "balance": {"strategy": "oversample"},
        }
    )
    out = prepare_data(cfg, tmp_path / "run", length_fn=lambda r: len(r["text"].split()))
    rep = out.report
    assert rep["rows_in"] == len(rows)
    assert (
        rep["rows_in"] + rep["rows_added"] == sum(rep["rows_out"].values()) + rep["drops"]["total"]
    )
    assert rep["drops"]["by_stage"] == {"validate": 1, "length": 1, "dedupe": 3, "near_dedupe": 1}
    assert rep["drops"]["by_reason"]["dedupe"] == {"conflicting labels": 2, "exact duplicate": 1}
    assert rep["redactions"]["email"] == 1
    assert len(_read_jsonl(tmp_path / "run" / "rejects.jsonl")) == rep["drops"]["total"]
    for split, n in rep["rows_out"].items():
        assert len(_read_jsonl(tmp_path / "run" / "data" / f"{split}.jsonl")) == n
        assert sum(rep["label_distribution"][split].values()) == n
    before, after = rep["balance"]["before"], rep["balance"]["after"]
    assert set(after.values()) == {max(before.values())} and before["a"] < before["c"]
    assert rep["rows_added"] == sum(after.values()) - sum(before.values())
    assert rep["lengths"]["train"]["tokens"]["max"] >= rep["lengths"]["train"]["tokens"]["min"]
    assert set(rep["lengths"]["eval"]["chars"]) == {"count", "min", "mean", "p50", "p95", "max"}
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert saved == rep
    md = (tmp_path / "run" / "data_report.md").read_text(encoding="utf-8")
    assert "| dedupe | conflicting labels | 2 |" in md and "## Lengths" in md


def test_leakage_reported_and_removed(tmp_path: Path) -> None:
    long = " ".join(f"word{i}" for i in range(300))  # one word changed: Jaccard ~0.97
    train = _good(10) + [
        {"text": "shared exact text", "label": "pos"},
        {"text": long, "label": "neg"},
    ]
    ev = [
        {"text": "shared exact text", "label": "pos"},
        {"text": long.replace("word30", "other"), "label": "neg"},
        {"text": "fresh eval row", "label": "pos"},
    ]
    data = {
        "train": _jsonl(tmp_path / "tr.jsonl", train),
        "eval": _jsonl(tmp_path / "ev.jsonl", ev),
    }
    kept = prepare_data(_cfg(data), tmp_path / "a")
    leak = kept.report["leakage"]
    assert leak["by_split"] == {"eval": {"exact": 1, "near": 1}}
    assert leak["removed_from_train"] == 0 and len(kept.splits["train"]) == 12
    assert {e["train"] for e in leak["examples"]} == {"tr.jsonl:11", "tr.jsonl:12"}
    data["leakage"] = {"remove_from_train": True}
    removed = prepare_data(_cfg(data), tmp_path / "b")
    assert len(removed.splits["train"]) == 10 and len(removed.splits["eval"]) == 3
    rej = _read_jsonl(tmp_path / "b" / "rejects.jsonl")
    assert [(r["line"], r["stage"]) for r in rej] == [(11, "leakage"), (12, "leakage")]
    assert "ev.jsonl:1" in rej[0]["reason"]


def test_labels_weights_and_eval_labels(tmp_path: Path) -> None:
    train = [
        {"text": f"t{i} words here", "label": lab} for i, lab in enumerate([10, 2, 2, 2, 1.0, 1.0])
    ]
    ev = [{"text": "e1 words", "label": 2}, {"text": "e2 words", "label": 7}]
    data = {
        "train": _jsonl(tmp_path / "tr.jsonl", train),
        "eval": _jsonl(tmp_path / "e.jsonl", ev),
        "max_bad_fraction": 0.5,
    }
    out = prepare_data(_cfg(data, train={"class_weights": "balanced"}), tmp_path / "run")
    assert out.labels == ["1", "2", "10"]
    assert out.label_weights == [1.0, round(6 / 9, 6), 2.0]
    assert [r["label"] for r in out.splits["eval"]] == ["2"]
    rej = _read_jsonl(tmp_path / "run" / "rejects.jsonl")
    assert rej[0]["reason"].startswith("label '7' does not occur in train")
    data["balance"] = {"strategy": "loss_weights"}
    assert prepare_data(_cfg(data), tmp_path / "r2").label_weights == out.label_weights
    assert prepare_data(_cfg({**data, "balance": {}}), tmp_path / "r3").label_weights is None


def test_split_from_train_is_stratified_and_deterministic(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "t.jsonl", _good(100, labels=("a", "a", "a", "b")))
    cfg = _cfg({"train": p, "split": {"eval": 0.2, "test": 0.0}}, run={"seed": 5})
    one = prepare_data(cfg, tmp_path / "one")
    two = prepare_data(cfg, tmp_path / "two")
    assert one.splits == two.splits and set(one.splits) == {"train", "eval"}
    assert one.report["label_distribution"]["eval"] == {"a": 15, "b": 5}
    assert not (tmp_path / "one" / "data" / "test.jsonl").exists()
    other = prepare_data(
        _cfg({"train": p, "split": {"eval": 0.2}}, run={"seed": 6}), tmp_path / "three"
    )
    assert other.splits["eval"] != one.splits["eval"]


def test_sft_formats_and_group_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the working directory
    (tmp_path / "corpus.txt").write_text("first line of text\n\nsecond line\n", encoding="utf-8")
    out = prepare_data(_cfg({"train": "corpus.txt", "split": {"eval": 0}}, task="sft"), Path("r"))
    assert out.format == "text" and out.labels is None
    assert out.splits["train"] == [
        {"text": "first line of text", "_source": "corpus.txt:1"},
        {"text": "second line", "_source": "corpus.txt:3"},
    ]
    assert out.splits["eval"] == [] and out.report["warnings"]
    chats = [
        {
            "conversations": [
                {"from": "human", "value": f"q{i}"},
                {"from": "gpt", "value": f"a{i}"},
            ],
            "lang": "de" if i < 2 else "en",
        }
        for i in range(6)
    ]
    _jsonl(tmp_path / "chat.jsonl", chats)
    cfg = _cfg(
        {
            "train": "chat.jsonl",
            "split": {"eval": 0},
            "balance": {"column": "lang", "strategy": "undersample"},
        },
        task="sft",
    )
    out = prepare_data(cfg, Path("c"))
    assert out.format == "chat"
    assert out.splits["train"][0] == {
        "messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}],
        "_group": "de",
        "_source": "chat.jsonl:1",
    }
    assert out.report["balance"]["after"] == {"de": 2, "en": 2}


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.train is not set"):
        prepare_data(_cfg({}), tmp_path / "r")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no rows found"):
        prepare_data(_cfg({"train": str(empty)}), tmp_path / "r")
    p = _jsonl(tmp_path / "t.jsonl", [{"body": "x", "cls": "y"}])
    with pytest.raises(UserError, match="columns found: body, cls"):
        prepare_data(_cfg({"train": p}), tmp_path / "r")


def test_read_rows_for_eval_and_predict(tmp_path: Path) -> None:
    p = _jsonl(
        tmp_path / "in.jsonl",
        [
            {"review": "Great  product\r\n", "stars": 5},
            {"review": "mail a@b.com", "stars": 1},
            {"review": "", "stars": 3},
        ],
    )
    cfg = _cfg({"columns": {"text": "review", "label": "stars"}, "max_bad_fraction": 0.5})
    rows, rejects = read_rows(p, cfg)
    assert rows == [
        {"text": "Great product", "label": "5", "_source": "in.jsonl:1"},
        {"text": "mail a@b.com", "label": "1", "_source": "in.jsonl:2"},
    ]
    assert rejects == [
        {
            "source": p,
            "line": 3,
            "reason": "field 'text' is empty",
            "stage": "validate",
            "row": {"review": "", "stars": 3},
        }
    ]
    q = _jsonl(tmp_path / "predict.jsonl", [{"text": "no label here"}])
    rows, _ = read_rows(q, _cfg({}), labels_optional=True)
    assert rows == [{"text": "no label here", "_source": "predict.jsonl:1"}]
    with pytest.raises(UserError, match="data.format is classification but no column for 'label'"):
        read_rows(q, _cfg({"format": "classification"}))
    r = _jsonl(tmp_path / "r.jsonl", [{"text": "ok", "label": "x"}, {"text": "no label"}])
    with pytest.raises(UserError, match=r"1 of 2 rows \(50.0%\) are invalid"):
        read_rows(r, _cfg({}))


def test_parquet_with_column_mapping_and_float_labels(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "reviews.parquet"
    table = {"review": [f"review text {i}" for i in range(10)], "stars": [1.0, 2.0] * 5}
    pq.write_table(pa.table(table), p)
    cfg = _cfg({"train": str(p), "columns": {"text": "review", "label": "stars"}})
    out = prepare_data(cfg, tmp_path / "run")
    assert out.labels == ["1", "2"]
    rows = out.splits["train"] + out.splits["eval"]
    assert sorted(r["_source"] for r in rows) == sorted(
        f"reviews.parquet:{i}" for i in range(1, 11)
    )
    assert {r["label"] for r in rows} == {"1", "2"}
