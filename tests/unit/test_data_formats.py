"""Format detection, column aliases and mapping, per-row validation and label handling."""

from __future__ import annotations

import pytest

from lmtune.data.formats import (
    RowError,
    Schema,
    detect_format,
    label_str,
    natural_labels,
    resolve_mapping,
    to_canonical,
)
from lmtune.errors import UserError


def _detect(columns, task, requested="auto", user_map=None):
    mapping = resolve_mapping(columns, user_map or {})
    return detect_format(columns, mapping, task, requested, "f.jsonl"), mapping


@pytest.mark.parametrize(
    ("columns", "task", "fmt"),
    [
        (["messages"], "sft", "chat"),
        (["instruction", "input", "output"], "sft", "instruction"),
        (["text"], "sft", "text"),
        (["text", "label"], "classification", "classification"),
        (["text", "text_pair", "label"], "classification", "pair_classification"),
        (["instruction", "input", "output", "text"], "sft", "instruction"),
        (["text", "label"], "sft", "text"),
    ],
)
def test_auto_detect_per_format(columns: list[str], task: str, fmt: str) -> None:
    assert _detect(columns, task)[0] == fmt


@pytest.mark.parametrize(
    ("columns", "task", "fmt", "expect"),
    [
        (["sentence", "label"], "classification", "classification", {"text": "sentence"}),
        (["review", "stars"], "classification", None, None),
        (
            ["sentence1", "sentence2", "label"],
            "classification",
            "pair_classification",
            {"text": "sentence1", "text_pair": "sentence2"},
        ),
        (["question1", "question2", "is_duplicate"], "classification", None, None),
        (["instruction", "response"], "sft", "instruction", {"output": "response"}),
        (
            ["prompt", "completion"],
            "sft",
            "instruction",
            {"instruction": "prompt", "output": "completion"},
        ),
        (["conversations"], "sft", "chat", {"messages": "conversations"}),
        (["content"], "sft", "text", {"text": "content"}),
    ],
)
def test_aliases(columns, task, fmt, expect) -> None:
    if fmt is None:  # no label column: must fail with the columns listed
        with pytest.raises(UserError, match="columns found: " + ", ".join(columns)):
            _detect(columns, task)
        return
    got, mapping = _detect(columns, task)
    assert got == fmt
    assert {k: mapping[k] for k in expect} == expect


def test_user_mapping_wins_and_is_used() -> None:
    fmt, mapping = _detect(
        ["review", "stars"], "classification", user_map={"text": "review", "label": "stars"}
    )
    assert fmt == "classification"
    row = to_canonical({"review": "good", "stars": 5}, Schema(fmt, mapping))
    assert row == {"text": "good", "label": "5"}


def test_ambiguous_and_failed_detection_explain_how_to_fix() -> None:
    with pytest.raises(UserError) as e:
        _detect(["sentence", "review", "label"], "classification")
    assert "'sentence' and 'review'" in str(e.value) and "data.columns" in str(e.value)
    with pytest.raises(UserError) as e:
        _detect(["messages", "instruction", "output"], "sft")
    msg = str(e.value)
    assert "columns found: messages, instruction, output" in msg and "data.format" in msg
    with pytest.raises(UserError, match=r"cannot tell the data format.*columns found: a, b"):
        _detect(["a", "b"], "sft")
    with pytest.raises(UserError, match="data.format is classification but no column for 'label'"):
        _detect(["text"], "classification", requested="classification")


def test_mapping_to_an_absent_column_says_so() -> None:
    with pytest.raises(UserError, match="'text' \\(mapped to 'body', not found\\)"):
        _detect(["review", "label"], "classification", user_map={"text": "body"})


def test_explicit_format_overrides_detection() -> None:
    assert _detect(["instruction", "output", "text"], "sft", requested="text")[0] == "text"


def _bad(raw, fmt, allowed=None):
    with pytest.raises(RowError) as e:
        to_canonical(raw, Schema(fmt, {}), allowed)
    return e.value.reason


def test_row_validation_reasons_name_the_field() -> None:
    assert _bad({"label": "a"}, "classification") == "missing field 'text'"
    assert (
        _bad({"text": 3, "label": "a"}, "classification")
        == "field 'text' must be a string, got int"
    )
    assert _bad({"text": "  ", "label": "a"}, "classification") == "field 'text' is empty"
    assert (
        _bad({"text": "x", "label": ["a"]}, "classification")
        == "field 'label' must be a string or number, got list"
    )
    assert _bad({"text": "x", "label": None}, "classification") == "field 'label' is null"
    assert (
        _bad({"text": "x", "label": "c"}, "classification", ["a", "b"])
        == "unknown label 'c' (allowed: a, b)"
    )
    assert (
        _bad({"text": "bad \udcff"}, "text")
        == "undecodable bytes (not valid UTF-8) in field 'text'"
    )
    assert _bad({"instruction": "q"}, "instruction") == "missing field 'output'"
    assert "role 'bot'" in _bad({"messages": [{"role": "bot", "content": "x"}]}, "chat")
    assert (
        _bad({"messages": [{"role": "user", "content": "hi"}]}, "chat")
        == "no assistant turn with non-empty content in 'messages'"
    )
    assert "must be a non-empty list" in _bad({"messages": "hello"}, "chat")
    assert "content must be a string" in _bad(
        {"messages": [{"role": "assistant", "content": None}]}, "chat"
    )


def test_canonical_rows() -> None:
    s = Schema("instruction", {})
    assert to_canonical({"instruction": "q", "output": "a"}, s) == {
        "instruction": "q",
        "input": "",
        "output": "a",
    }
    assert to_canonical({"instruction": "q", "input": None, "output": "a", "x": 1}, s) == {
        "instruction": "q",
        "input": "",
        "output": "a",
    }
    share = {
        "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "yo"},
        ]
    }
    row = to_canonical(share, Schema("chat", {"messages": "conversations"}))
    assert row["messages"] == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    csv_chat = {
        "messages": '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]'
    }
    assert len(to_canonical(csv_chat, Schema("chat", {}))["messages"]) == 2
    grouped = to_canonical(
        {"text": "t", "label": 1, "lang": "de"}, Schema("classification", {}, group_column="lang")
    )
    assert grouped == {"text": "t", "label": "1", "_group": "de"}
    predict = to_canonical({"text": "t"}, Schema("classification", {}, labels_optional=True))
    assert predict == {"text": "t"}


def test_label_strings_and_natural_order() -> None:
    assert [label_str(v) for v in (1, 1.0, 2.5, " pos ", True)] == ["1", "1", "2.5", "pos", "True"]
    assert natural_labels(["10", "9", "1", "9"]) == ["1", "9", "10"]
    assert natural_labels(["-1", "0.5", "0"]) == ["-1", "0", "0.5"]
    assert natural_labels(["b", "a10", "a2", "A1"]) == ["A1", "a2", "a10", "b"]
