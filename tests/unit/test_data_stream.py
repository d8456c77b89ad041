"""prepare in batches: worker processes clean like one process, a huge row stays cheap."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

from lmtune.config import Config
from lmtune.data.pipeline import prepare_data
from lmtune.data.stream import BATCH
from runkit import write_jsonl


def _cfg(data: dict, **extra) -> Config:
    return Config.model_validate({"task": "sft", "data": data, **extra})


def _outputs(run: Path) -> dict:
    report = json.loads((run / "data_report.json").read_text())
    return {
        "train": (run / "data" / "train.jsonl").read_text(),
        "eval": (run / "data" / "eval.jsonl").read_text(),
        "rejects": (run / "rejects.jsonl").read_text(),
        "report": {k: report[k] for k in ("drops", "pii", "rows_out", "rows_changed_by_cleaning")},
    }


def test_worker_processes_clean_like_one(tmp_path: Path) -> None:
    rows = []
    for i in range(BATCH + 1500):  # more than one batch: the workers start
        out = f"answer {i % 4000}  with  spaces"  # every 4000th repeats: exact duplicates
        if i % 997 == 0:
            out += f" mail me at user{i}@example.com"
        rows.append({"instruction": f"question {i % 4000}", "output": out})
    rows[7] = {"instruction": "", "output": "no instruction"}
    data = str(write_jsonl(tmp_path / "t.jsonl", rows))
    one = prepare_data(_cfg({"train": data, "num_proc": 1}), tmp_path / "one", say=None)
    two = prepare_data(_cfg({"train": data, "num_proc": 2}), tmp_path / "two", say=None)
    a, b = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert a == b
    # 2,500 repeats, less 5 that differ by an email and the one whose first row was rejected
    assert a["report"]["drops"]["by_stage"]["dedupe"] == 2494
    assert a["report"]["pii"]["found"] == {"email": 7} and len(a["report"]["pii"]["examples"]) == 5
    assert list(one.splits["train"]) == list(two.splits["train"])


def test_huge_row_with_redaction_and_near_dedupe_stays_small(tmp_path: Path) -> None:
    big = " ".join(
        f"w{i % 5000} x@y.com" if i % 100_000 == 0 else f"w{i % 5000}" for i in range(2_000_000)
    )
    rows = [{"instruction": "say hi", "output": big}] + [
        {"instruction": f"q{i}", "output": f"a{i} reply"} for i in range(19)
    ]
    data = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows)),
        "split": {"eval": 0.5},
        "clean": {"pii": "redact", "near_dedupe": {"enabled": True}},
        "leakage": {"near": "on"},
    }
    del big, rows
    tracemalloc.start()
    prepared = prepare_data(_cfg(data, model={"max_length": 32}), tmp_path / "run", say=None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    kept = [r for s in prepared.splits.values() for r in s if r["instruction"] == "say hi"]
    assert len(kept) == 1 and len(kept[0]["output"]) == 2 * 32 * 32
    # The 10 MB line is read once and cleaned (each regex copies it once); the cut row is
    # what dedupe, leakage's MinHash and the splits see.
    assert peak < 250e6, peak


def test_a_killed_prepare_leaves_nothing_after_the_next_one(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    run = tmp_path / "run"
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    killed = [run / f".train-rows-{host}-{dead}-abc", run / f".prepare-{host}-{dead}-def"]
    kept = [run / ".train-rows-otherhost-1-ghi", run / f".prepare-{host}-{os.getpid()}-jkl"]
    for d in killed + kept:
        (d / "sub").mkdir(parents=True)
    data = str(write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(20)]))
    lines: list[str] = []
    prepare_data(_cfg({"train": data}), run, say=lines.append)
    assert not any(d.exists() for d in killed) and all(d.exists() for d in kept)
    assert any("removed 2 work folder(s) a killed run left" in line for line in lines)
    # this process's own work folders: prepare's went, the train rows' stay while it may read
    own = f"-{host}-{os.getpid()}-"
    left = sorted(p.name.split(own)[0] for p in run.iterdir() if own in p.name)
    assert left == [".prepare", ".train-rows"]  # the kept one, and this run's train rows


def test_texts_from_reads_on_from_any_row_across_batches(tmp_path: Path) -> None:
    from lmtune.data.features import LazyRows
    from lmtune.data.stream import Spill, texts_from

    spill = Spill(tmp_path / "rows.arrow")
    rows = [{"i": i} for i in range(25)]
    for start in range(0, 25, 7):  # record batches of 7, 7, 7 and 4 rows
        spill.add(rows[start : start + 7])
    spill.close()
    for start in (0, 6, 7, 13, 24, 25):
        assert [json.loads(t) for t in texts_from(tmp_path / "rows.arrow", start)] == rows[start:]
    assert list(LazyRows(spill.close())) == rows  # iteration reads the same way


def test_leaks_found_in_every_batch_of_train_are_removed_with_their_lines(tmp_path: Path) -> None:
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(BATCH + 200)]
    ev = [rows[3], rows[BATCH + 100], {"instruction": "fresh", "output": "row"}]
    data = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows)),
        "eval": str(write_jsonl(tmp_path / "e.jsonl", ev)),
        "leakage": {"remove_from_train": True},
    }
    out = prepare_data(_cfg(data), tmp_path / "run", say=None)
    assert out.report["leakage"]["by_split"] == {"eval": {"exact": 2, "near": 0}}
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["stage"]) for r in rejects] == [(4, "leakage"), (BATCH + 101, "leakage")]
    assert len(out.splits["train"]) == BATCH + 198
    assert rows[BATCH + 100] not in [
        {k: r[k] for k in ("instruction", "output")} for r in out.splits["train"]
    ]
