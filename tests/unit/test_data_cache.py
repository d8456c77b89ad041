"""Out-of-core data: Arrow features, the data cache, eval cap, long rows, hub and streaming."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from lmtune.config import Config
from lmtune.data.encode import encode_split
from lmtune.data.io import read_file
from lmtune.data.pipeline import prepare_data
from lmtune.data.stages import near_leakage
from lmtune.tasks.sft import SFTTask
from lmtune.train.run import run_training
from runkit import config, instruction_rows, tiny_causal_dir, write_jsonl
from tiny import make_tokenizer

datasets = pytest.importorskip("datasets")


def _cfg(data: dict, **extra) -> Config:
    return Config.model_validate({"task": "sft", "data": data, **extra})


def test_encode_split_equals_encode_and_keeps_rejects(tmp_path: Path) -> None:
    tok = make_tokenizer()
    task = SFTTask(tok, "instruction", 120)
    rows = [{**r, "_source": f"a.jsonl:{i + 1}"} for i, r in enumerate(instruction_rows(30))]
    rows[4] = {"instruction": "too long " * 100, "output": "x", "_source": "a.jsonl:5"}
    feats, rejects = encode_split(task, rows, tmp_path / "enc")
    expected = [task.encode(r) for i, r in enumerate(rows) if i != 4]
    assert len(feats) == 29 and [feats[i] for i in range(29)] == expected
    assert list(feats) == expected and feats.lengths == [f["length"] for f in expected]
    assert [(r["source"], r["stage"]) for r in rejects] == [("a.jsonl:5", "tokenize")]
    assert "max_length=120" in rejects[0]["reason"] and "_source" not in rejects[0]["row"]
    both = feats + [{"input_ids": [1, 2], "labels": [1, 2], "length": 2}]
    assert len(both) == 30 and both[29]["length"] == 2 and both.lengths[-1] == 2


def test_encode_split_in_two_processes(tmp_path: Path) -> None:
    task = SFTTask(make_tokenizer(), "instruction", 120)
    rows = [{**r, "_source": f"a:{i}"} for i, r in enumerate(instruction_rows(1200))]
    rows[1100] = {"instruction": "too long " * 100, "output": "x", "_source": "a:1100"}
    feats, rejects = encode_split(task, rows, tmp_path / "enc", num_proc=2)
    assert len(feats) == 1199 and [r["source"] for r in rejects] == ["a:1100"]
    assert feats[1150] == task.encode(rows[1151]) and len(feats.lengths) == 1199
    # Each worker reads its shard's rows from the file itself: all of them, in order.
    assert list(feats) == [task.encode(r) for i, r in enumerate(rows) if i != 1100]


def test_second_run_reuses_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(48))
    calls = []
    real = SFTTask.encode
    monkeypatch.setattr(SFTTask, "encode", lambda self, row: calls.append(1) or real(self, row))

    def run(name: str, **data_extra) -> dict:
        cfg = config(
            tmp_path,
            task="sft",
            run={"output_dir": str(tmp_path / name)},
            model={"name_or_path": str(model_dir)},
            data={"train": str(data), "format": "instruction", "template": "alpaca", **data_extra},
            train={"max_steps": 2, "eval_before": False},
        )
        return run_training(cfg, quiet=True)

    first = run("a")
    n_first = len(calls)
    assert n_first > 0 and "data cache hit" not in capsys.readouterr().out
    second = run("b")
    out = capsys.readouterr().out
    # Only evaluation encodes (its rows, not the train split): far fewer calls than training.
    assert "data cache hit" in out and len(calls) - n_first < n_first
    assert second["data"] == first["data"]
    for name in ("data_report.json", "data/train.jsonl", "data/eval.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    rep = json.loads((tmp_path / "b" / "data_report.json").read_text())
    assert rep["lengths"]["train"]["tokens"]["count"] == first["data"]["train"]
    run("c", template="chatml")  # a setting that shapes encoding: a new entry, a miss
    assert "data cache hit" not in capsys.readouterr().out


def test_eval_split_is_capped(tmp_path: Path, capsys) -> None:
    rows = [{"text": f"row {i} text"} for i in range(60)]
    data = {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "split": {"eval": 0.5}}
    data["split"]["max_eval_rows"] = 10
    prepared = prepare_data(_cfg(data), tmp_path / "run")
    assert len(prepared.splits["eval"]) == 10 and len(prepared.splits["train"]) == 50
    assert "eval split capped at 10 rows" in capsys.readouterr().out


def test_huge_row_is_cut_early(tmp_path: Path, capsys) -> None:
    big = "word " * 2_000_000  # 10 MB in one field
    rows = [{"instruction": "say hi", "output": big}] + [
        {"instruction": f"q{i}", "output": f"a{i}"} for i in range(9)
    ]
    data = {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "split": {"eval": 0.0}}
    tracemalloc.start()
    prepared = prepare_data(_cfg(data, model={"max_length": 32}), tmp_path / "run")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    kept = next(r for r in prepared.splits["train"] if r["instruction"] == "say hi")
    assert len(kept["output"]) == 2 * 32 * 32 and kept["output"].startswith("word word")
    assert "1 row(s) have a text field over 2,048 characters" in capsys.readouterr().out
    assert peak < 200e6, peak  # the reader holds the 10 MB line; nothing multiplies it


def test_leakage_near_follows_the_setting(tmp_path: Path) -> None:
    long = " ".join(f"word{i}" for i in range(300))
    files = {
        "train": str(write_jsonl(tmp_path / "tr.jsonl", [{"text": long}, {"text": "a b"}])),
        "eval": str(write_jsonl(tmp_path / "ev.jsonl", [{"text": long.replace("word3 ", "x ")}])),
    }
    on = prepare_data(_cfg({**files, "leakage": {"near": "on"}}), tmp_path / "on")
    off = prepare_data(_cfg({**files, "leakage": {"near": "off"}}), tmp_path / "off")
    assert on.report["leakage"]["by_split"]["eval"]["near"] == 1
    assert off.report["leakage"]["by_split"]["eval"]["near"] == 0
    assert near_leakage(_cfg({}), 20_000) and not near_leakage(_cfg({}), 20_001)
    near_on = _cfg({"clean": {"near_dedupe": {"enabled": True}}})
    assert near_leakage(near_on, 10**6)


def test_local_dataset_folders_and_hub_paths(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "owner" / "name"
    write_jsonl(folder / "train.jsonl", [{"text": "a"}, {"text": "b"}])
    write_jsonl(folder / "validation.jsonl", [{"text": "c"}])
    assert [r.data for r in read_file(str(folder), "eval")] == [{"text": "c"}]
    assert len(read_file(str(folder), "train")) == 2
    # load_dataset looks for a local folder named like the hub id before the hub itself.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recs = read_file("hf://datasets/owner/name@validation", "train")
    assert [(r.line, r.data) for r in recs] == [(1, {"text": "c"})]
    assert [r.data["text"] for r in read_file("hf://datasets/owner/name", "train")] == ["a", "b"]


def test_streaming_takes_what_max_steps_needs(tmp_path: Path) -> None:
    rows = [{"text": f"streamed row {i}"} for i in range(400)]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    data = {"train": str(tmp_path / "saved"), "streaming": True, "split": {"eval": 0.1}}
    data["split"]["max_eval_rows"] = 5
    cfg = _cfg(data, train={"max_steps": 3, "batch_size": 4})
    a = prepare_data(cfg, tmp_path / "a")
    b = prepare_data(cfg, tmp_path / "b")
    assert len(a.splits["train"]) >= 12 and len(a.splits["eval"]) == 5
    assert len(a.splits["train"]) + len(a.splits["eval"]) < 400  # it stopped early
    assert a.splits == b.splits  # the hash split is deterministic
    with pytest.raises(Exception, match="needs train.max_steps"):
        prepare_data(_cfg(data), tmp_path / "c")
