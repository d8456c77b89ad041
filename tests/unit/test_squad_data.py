"""QA data: SQuAD JSON flattening, validation rejects, offset-safe cleaning, split by article."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import CleanConfig, Config
from lmtune.data.clean import RowCleaner
from lmtune.data.formats import RowError
from lmtune.data.io import read_file
from lmtune.data.pipeline import prepare_data, read_rows
from lmtune.data.split import group_split_indices
from lmtune.data.squad import clean_qa, qa_row
from lmtune.errors import UserError

CTX = "Paris is the capital of France. The Seine flows through Paris."


def _qa(qid: str, question: str, answer: str | None, start: int | None = None, **extra) -> dict:
    answers = (
        []
        if answer is None
        else [{"text": answer, "answer_start": CTX.index(answer) if start is None else start}]
    )
    return {"id": qid, "question": question, "answers": answers, **extra}


def _squad(
    path: Path, articles: list[tuple[str, list[tuple[str, list[dict]]]]], version: str = "1.1"
) -> Path:
    data = [
        {"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras]}
        for t, paras in articles
    ]
    path.write_text(json.dumps({"version": version, "data": data}))
    return path


def _cfg(tmp: Path, train: Path, **data) -> Config:
    return Config.model_validate(
        {
            "task": "qa",
            "run": {"output_dir": str(tmp / "run"), "seed": 3},
            "data": {"train": str(train), "clean": {"pii": False, "secrets": False}, **data},
        }
    )


def test_squad_json_is_flattened_one_record_per_question(tmp_path: Path) -> None:
    path = _squad(
        tmp_path / "s.json",
        [
            (
                "France",
                [
                    (
                        CTX,
                        [
                            _qa("q1", "What is the capital of France?", "Paris"),
                            _qa("q2", "Which river flows through Paris?", "The Seine"),
                        ],
                    )
                ],
            ),
            ("Empty", [("Nothing here.", [_qa("q3", "Who?", None, is_impossible=True)])]),
        ],
        version="v2.0",
    )
    recs = read_file(str(path))
    assert [r.line for r in recs] == [1, 2, 3]
    assert recs[1].data["title"] == "France" and recs[1].data["context"] == CTX
    rows, rejects = read_rows(path, _cfg(tmp_path, path))
    assert rejects == []
    assert rows[1]["answers"] == {"text": ["The Seine"], "answer_start": [32]}
    assert rows[0]["id"] == "q1" and rows[0]["is_impossible"] is False
    assert (
        rows[2]["answers"] == {"text": [], "answer_start": []} and rows[2]["is_impossible"] is True
    )
    assert rows[0]["_source"] == "s.json:1"


def test_limit_counts_questions_and_broken_structure_is_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "title": "A",
                        "paragraphs": [
                            {"context": CTX, "qas": [_qa("q1", "Capital?", "Paris")] * 3}
                        ],
                    },
                    {"title": "B", "paragraphs": [{"context": CTX, "qas": "oops"}]},
                    {
                        "title": "C",
                        "paragraphs": [{"context": CTX, "qas": [_qa("q9", "River?", "Seine")]}],
                    },
                ]
            }
        )
    )
    assert len(read_file(str(path), limit=2)) == 2
    recs = read_file(str(path))
    assert len(recs) == 5 and recs[3].data is None
    assert "data[1].paragraphs[0]" in recs[3].error and "qas" in recs[3].error
    assert recs[4].data["id"] == "q9"


def test_bad_rows_are_rejected_with_row_and_reason(tmp_path: Path) -> None:
    path = _squad(
        tmp_path / "s.json",
        [
            (
                "France",
                [
                    (
                        CTX,
                        [
                            _qa("ok1", "What is the capital of France?", "Paris"),
                            _qa("shifted", "Which river?", "Seine", start=5),
                            _qa("empty-q", "   ", "Paris"),
                            _qa("both", "Capital?", "Paris", is_impossible=True),
                            _qa("none", "Capital?", None, is_impossible=False),
                            {
                                "id": "nostart",
                                "question": "Capital?",
                                "answers": [{"text": "Paris"}],
                            },
                            _qa("ok2", "Whose capital is Paris?", "France"),
                        ],
                    )
                ],
            )
        ],
    )
    rows, rejects = read_rows(path, _cfg(tmp_path, path, max_bad_fraction=0.9))
    assert [r["id"] for r in rows] == ["ok1", "ok2"]
    by_id = {r["row"]["id"]: r for r in rejects}
    assert by_id["shifted"]["line"] == 2 and by_id["shifted"]["source"] == str(path)
    reason = by_id["shifted"]["reason"]
    assert "answer_start 5" in reason and "occurs at 36" in reason and "fix answer_start" in reason
    assert "'question' is empty" in by_id["empty-q"]["reason"]
    assert "is_impossible is true" in by_id["both"]["reason"]
    assert "answers is empty but is_impossible is false" in by_id["none"]["reason"]
    assert "text and answer_start" in by_id["nostart"]["reason"]
    with pytest.raises(
        UserError, match=r"s\.json: 5 of 7 rows .* row 2: answers\[0\]\.answer_start 5"
    ):
        read_rows(path, _cfg(tmp_path, path, max_bad_fraction=0.1))


def test_flat_jsonl_and_csv_rows(tmp_path: Path) -> None:
    jl = tmp_path / "flat.jsonl"
    jl.write_text(
        json.dumps(
            {
                "context": CTX,
                "question": "Capital?",
                "answers": {"text": ["Paris"], "answer_start": [0]},
            }
        )
        + "\n"
        + json.dumps(
            {
                "passage": CTX,
                "question": "River?",
                "answers": [{"text": "Seine", "answer_start": 36}],
            }
        )
        + "\n"
    )
    rows, rejects = read_rows(
        jl, _cfg(tmp_path, jl, columns={"context": "passage"}, max_bad_fraction=0.9)
    )
    # The column mapping applies to every row: the first row has no 'passage' column.
    assert len(rows) == 1 and rows[0]["answers"]["answer_start"] == [36]
    assert "missing field 'context' (column 'passage'" in rejects[0]["reason"]
    csv = tmp_path / "flat.csv"
    csv.write_text(
        'context,question,answers\n"'
        + CTX
        + '",River?,"[{""text"": ""Seine"", ""answer_start"": ""36""}]"\n'
    )
    rows, rejects = read_rows(csv, _cfg(tmp_path, csv))
    assert rejects == [] and rows[0]["answers"] == {"text": ["Seine"], "answer_start": [36]}
    assert rows[0]["title"] == "" and "id" not in rows[0]


def test_qa_format_detection_names_missing_columns(tmp_path: Path) -> None:
    jl = tmp_path / "x.jsonl"
    jl.write_text(json.dumps({"text": "hello", "question": "q"}) + "\n")
    with pytest.raises(
        UserError, match=r"task qa needs SQuAD JSON .*'context'.*columns found: text, question"
    ):
        read_rows(jl, _cfg(tmp_path, jl))


def test_prediction_rows_may_lack_answers() -> None:
    row = qa_row({"context": CTX, "question": "Capital?"}, {}, answers_optional=True)
    assert row == {"title": "", "context": CTX, "question": "Capital?"}
    with pytest.raises(RowError, match="missing field 'answers'"):
        qa_row({"context": CTX, "question": "Capital?"}, {})


def test_answer_whitespace_is_trimmed_and_offset_moved() -> None:
    row = qa_row(
        {"context": CTX, "question": "q", "answers": [{"text": " the capital", "answer_start": 8}]},
        {},
    )
    assert row["answers"] == {"text": ["the capital"], "answer_start": [9]}


def test_cleaning_keeps_answers_on_their_spans() -> None:
    ctx = "  Intro\u00a0text.\tThe  city   of New    York is   big.\r\n\n\n\nEnd "
    answers = {
        "text": ["New    York", "city   of"],
        "answer_start": [ctx.index("New"), ctx.index("city")],
    }
    row = {"context": ctx, "question": " Where?  ", "answers": answers, "is_impossible": False}
    clean_qa(row, RowCleaner(CleanConfig(pii=False, secrets=False))._one)
    assert row["context"] == "Intro text. The city of New York is big.\n\nEnd"
    assert row["question"] == "Where?"
    assert row["answers"]["text"] == ["New York", "city of"]
    for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
        assert row["context"][start : start + len(text)] == text


def test_cleaning_never_leaks_redacted_text_into_answers() -> None:
    ctx = "Write to ann@example.com for help."
    cleaner = RowCleaner(CleanConfig(pii=True, secrets=False))

    def row(answer: str) -> dict:
        return {
            "context": ctx,
            "question": "Email?",
            "is_impossible": False,
            "answers": {"text": [answer], "answer_start": [ctx.index(answer)]},
        }

    whole = row("ann@example.com")
    cleaner(whole, "qa")  # the whole address is the answer: it is redacted with the context
    assert whole["context"] == "Write to [EMAIL] for help." and whole["answers"]["text"] == [
        "[EMAIL]"
    ]
    after = row("help")
    cleaner(after, "qa")
    assert after["answers"] == {"text": ["help"], "answer_start": [21]}
    with pytest.raises(RowError, match="overlaps text that cleaning rewrites"):
        cleaner(row("example"), "qa")  # part of an address: cannot keep it and redact it


def test_group_split_keeps_groups_whole_and_is_seeded() -> None:
    sizes = [25, 30, 12, 40, 22, 18, 25, 27, 33, 20]
    groups = [f"art{g}" for g, n in enumerate(sizes) for _ in range(n)]
    a = group_split_indices(groups, 0.2, 0.1, seed=1)
    assert a == group_split_indices(groups, 0.2, 0.1, seed=1)
    assert a != group_split_indices(groups, 0.2, 0.1, seed=2)
    assert sorted(a["train"] + a["eval"] + a["test"]) == list(range(len(groups)))
    owners = {s: {groups[i] for i in idx} for s, idx in a.items()}
    assert not (
        owners["train"] & owners["eval"]
        or owners["train"] & owners["test"]
        or owners["eval"] & owners["test"]
    )
    n = len(groups)
    assert (
        abs(len(a["eval"]) - 0.2 * n) <= max(sizes) / 2
        and abs(len(a["test"]) - 0.1 * n) <= max(sizes) / 2
    )
    one = group_split_indices(["x"] * 5, 0.5, 0.0, seed=0)
    assert one == {"train": [0, 1, 2, 3, 4], "eval": [], "test": []}  # train keeps its only group


def test_pipeline_split_by_title_never_shares_an_article(tmp_path: Path) -> None:
    articles = []
    for a in range(12):
        ctx = f"Article {a} says that the number is {a * 7}. {CTX}"
        qas = [
            {
                "id": f"{a}-{q}",
                "question": f"Question {q} about article {a}?",
                "answers": [{"text": str(a * 7), "answer_start": ctx.index(f"is {a * 7}") + 3}],
            }
            for q in range(5)
        ]
        articles.append((f"Title{a}", [(ctx, qas)]))
    path = _squad(tmp_path / "s.json", articles)
    cfg = _cfg(tmp_path, path, split={"eval": 0.25, "test": 0.15, "group_by": "title"})
    prepared = prepare_data(cfg, tmp_path / "run")
    titles = {s: {r["title"] for r in rows} for s, rows in prepared.splits.items()}
    assert set(titles) == {"train", "eval", "test"}
    assert not (titles["train"] & titles["eval"]) and not (titles["train"] & titles["test"])
    assert len(prepared.splits["eval"]) == 15 and len(prepared.splits["test"]) == 10
    written = [
        json.loads(x) for x in (tmp_path / "run" / "data" / "eval.jsonl").read_text().splitlines()
    ]
    assert {r["title"] for r in written} == titles["eval"]
    bad = _cfg(tmp_path, path, split={"eval": 0.25, "group_by": "chapter"})
    with pytest.raises(UserError, match="data.split.group_by is 'chapter'"):
        prepare_data(bad, tmp_path / "run2")


def test_config_rejects_qa_mismatches() -> None:
    with pytest.raises(ValueError, match="task qa reads SQuAD JSON"):
        Config.model_validate({"task": "qa", "data": {"format": "classification"}})
    with pytest.raises(ValueError, match="the qa section only applies to task qa"):
        Config.model_validate({"task": "classification", "qa": {"doc_stride": 64}})
    with pytest.raises(ValueError, match="qa.doc_stride"):
        Config.model_validate({"task": "qa", "model": {"max_length": 64}, "qa": {"doc_stride": 48}})
