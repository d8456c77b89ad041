"""Inputs that used to reach "internal error" or a misleading message: each is named for
what it is (too deeply nested, a JSON array under .jsonl, binary data, another encoding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import Config
from lmtune.data.io import read_file
from lmtune.data.pipeline import prepare_data
from lmtune.errors import UserError


def _cfg(data: dict) -> Config:
    return Config.model_validate({"task": "classification", "data": data})


def test_deeply_nested_json_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    deep = '{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "a"}'
    p.write_text('{"text": "fine", "label": "a"}\n' + deep + "\n")
    with pytest.raises(UserError, match=r"t\.jsonl, line 2: JSON nested too deeply"):
        read_file(str(p))
    q = tmp_path / "t.json"
    q.write_text("[" + deep + "]")
    with pytest.raises(UserError, match=r"t\.json, the file: JSON nested too deeply"):
        read_file(str(q))


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_saved_as_jsonl_is_named(tmp_path: Path, indent: int | None) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps([{"text": "x", "label": "a"}] * 3, indent=indent))
    with pytest.raises(UserError, match=r"one JSON array of 3 items .* not JSON Lines.*\.json"):
        prepare_data(_cfg({"train": str(p)}), tmp_path / "run")


def test_binary_data_saved_as_jsonl_is_named(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(UserError, match=r"binary data, not text \(NUL bytes"):
        prepare_data(_cfg({"train": str(p)}), tmp_path / "run")
    p.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(UserError, match=r"binary data, not text: it starts like a parquet"):
        read_file(str(p))
    p.write_text('{"text": "x", "label": "a"}\n', encoding="utf-16")
    with pytest.raises(UserError, match=r"UTF-16 text: set data.encoding: utf-16"):
        read_file(str(p))
    assert read_file(str(p), encoding="utf-16")[0].data == {"text": "x", "label": "a"}


def test_latin1_csv_suggests_and_honours_data_encoding(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    rows = [f"caf\u00e9 cr\u00e8me number {i},{'ab'[i % 2]}" for i in range(10)]
    p.write_bytes(("text,label\n" + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(UserError, match=r"not UTF-8.*set data.encoding: latin-1"):
        prepare_data(_cfg({"train": str(p)}), tmp_path / "run")
    out = prepare_data(_cfg({"train": str(p), "encoding": "latin-1"}), tmp_path / "run2")
    texts = {r["text"] for s in out.splits.values() for r in s}
    assert "caf\u00e9 cr\u00e8me number 0" in texts and len(texts) == 10
    with pytest.raises(UserError, match="data.encoding 'klingon' is not a known"):
        read_file(str(p), encoding="klingon")
