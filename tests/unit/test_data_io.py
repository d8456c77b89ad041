"""Readers: every input kind, line numbers, limits, and the errors for unreadable inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmtune.data.io import as_paths, read_file
from lmtune.errors import UserError


def _data(records):
    return [(r.line, r.data) for r in records]


def test_jsonl_lines_blank_lines_and_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b"\n[1, 2]\r\n{"text": "c"}\r\n', encoding="utf-8")
    recs = read_file(str(p))
    assert [r.line for r in recs] == [1, 3, 4, 5]
    assert recs[0].data == {"text": "a"} and recs[3].data == {"text": "c"}
    assert recs[1].data is None and recs[1].error.startswith("invalid JSON: ")
    assert recs[2].data is None and "not a JSON object" in recs[2].error
    assert recs[0].source == "a.jsonl:1"


def test_json_array_data_object_and_jsonl_fallback(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"text": "x"}, {"text": "y"}]), encoding="utf-8")
    assert _data(read_file(str(a))) == [(1, {"text": "x"}), (2, {"text": "y"})]
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"version": 1, "data": [{"text": "z"}]}), encoding="utf-8")
    assert _data(read_file(str(b))) == [(1, {"text": "z"})]
    c = tmp_path / "c.json"  # JSON Lines saved with a .json name (common in the wild)
    c.write_text('{"text": "p"}\n{"text": "q"}\n', encoding="utf-8")
    assert _data(read_file(str(c))) == [(1, {"text": "p"}), (2, {"text": "q"})]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "p"},', encoding="utf-8")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_file(str(bad))
    scalar = tmp_path / "s.json"
    scalar.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(UserError, match="data"):
        read_file(str(scalar))


def test_csv_bom_crlf_quotes_and_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    body = 'text,label\r\n"hello, world",pos\r\n"two\r\nlines",neg\r\n\r\nplain,pos\r\nx,y,z\r\n'
    p.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    recs = read_file(str(p))
    assert recs[0].data == {"text": "hello, world", "label": "pos"} and recs[0].line == 2
    assert recs[1].data == {"text": "two\r\nlines", "label": "neg"} and recs[1].line == 3
    assert recs[2].data == {"text": "plain", "label": "pos"} and recs[2].line == 6
    assert recs[3].data is None and recs[3].line == 7 and "wrong number of fields" in recs[3].error


def test_tsv_keeps_literal_quotes_but_reads_csv_style_quoting(tmp_path: Path) -> None:
    glue = tmp_path / "glue.tsv"  # MRPC style: quotes are part of the text
    glue.write_text('label\tsentence\n1\t"I think," he said.\n0\tplain\n', encoding="utf-8")
    recs = read_file(str(glue))
    assert recs[0].data == {"label": "1", "sentence": '"I think," he said.'}
    pandas = tmp_path / "pd.tsv"  # pandas-style: quoted field with doubled quotes
    pandas.write_text('label\ttext\n1\t"He said ""hi"""\n0\tok\n', encoding="utf-8")
    assert read_file(str(pandas))[0].data == {"label": "1", "text": 'He said "hi"'}


def test_txt_and_gzip(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("first\n\n  \nsecond\n", encoding="utf-8")
    assert _data(read_file(str(p))) == [(1, {"text": "first"}), (4, {"text": "second"})]
    g = tmp_path / "a.jsonl.gz"
    g.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    assert _data(read_file(str(g))) == [(1, {"text": "zipped"})]


def test_undecodable_bytes_survive_as_surrogates(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"text": "ok"}\n{"text": "bad \xff byte"}\n')
    recs = read_file(str(p))
    assert recs[0].data == {"text": "ok"}
    assert "\udcff" in recs[1].data["text"]


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0]}), p)
    assert _data(read_file(str(p))) == [
        (1, {"text": "a", "label": 0}),
        (2, {"text": "b", "label": 1}),
        (3, {"text": "c", "label": 0}),
    ]
    assert len(read_file(str(p), limit=2)) == 2


def test_save_to_disk_dataset_and_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]})
    ds.save_to_disk(str(tmp_path / "single"))
    assert _data(read_file(str(tmp_path / "single"))) == [
        (1, {"text": "a", "label": 1}),
        (2, {"text": "b", "label": 0}),
    ]
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([1])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert len(read_file(str(tmp_path / "dict"), "train")) == 2
    assert _data(read_file(str(tmp_path / "dict"), "eval")) == [(1, {"text": "b", "label": 0})]
    assert len(read_file(str(tmp_path / "dict"), "test")) == 2  # falls back to train
    nosplit = datasets.DatasetDict({"other": ds})
    nosplit.save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(UserError, match="splits other"):
        read_file(str(tmp_path / "nosplit"), "eval")


def test_limit_caps_rows_per_file(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)), encoding="utf-8")
    assert len(read_file(str(p), limit=3)) == 3


def test_unreadable_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.jsonl: no such file.*accepted inputs"):
        read_file(str(tmp_path / "missing.jsonl"))
    odd = tmp_path / "a.xlsx"
    odd.write_bytes(b"x")
    with pytest.raises(UserError, match=r"a\.xlsx: unknown file type '\.xlsx'.*\.jsonl"):
        read_file(str(odd))
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(UserError, match="not one written by datasets' save_to_disk"):
        read_file(str(folder))


def test_as_paths_lists_and_globs(tmp_path: Path) -> None:
    for n in ("b.jsonl", "a.jsonl"):
        (tmp_path / n).write_text("", encoding="utf-8")
    assert as_paths(None) == []
    assert as_paths("x.jsonl") == ["x.jsonl"]
    assert as_paths(["x", "y"]) == ["x", "y"]
    assert [Path(p).name for p in as_paths(str(tmp_path / "*.jsonl"))] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(UserError, match="matches no files"):
        as_paths(str(tmp_path / "*.csv"))
