"""`lmtune ui` over real HTTP: runs, live events, compare, files, launch checks, registry,
monitor and playground, and its security rules (token, root confinement, size limits)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmtune.ops.registry import release
from uikit import call, make_runs, ui_in_thread


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ui")
    make_runs(base / "runs", base / "models")
    return base / "runs"


@pytest.fixture(scope="module")
def url(root: Path):
    with ui_in_thread(root) as u:
        yield u


def test_runs_table_lists_every_finished_run(url: str) -> None:
    status, rows = call(url, "/api/runs")
    assert status == 200
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"cls-a", "cls-b", "sft"}
    assert by_name["cls-a"]["status"] == "finished"
    assert by_name["cls-a"]["task"] == "classification" and by_name["sft"]["adapter"] == "lora"
    assert by_name["cls-a"]["steps"] > 0 and by_name["cls-a"]["best_metric"]


def test_run_detail_and_events_from_an_offset(url: str, root: Path) -> None:
    status, d = call(url, "/api/run?name=cls-a")
    assert status == 200 and "classification" in d["config"] and d["summary"]["train_steps"] > 0
    assert d["files"]["report.html"] and d["eval"]["details"]["confusion_matrix"]["labels"]
    _, first = call(url, "/api/events?name=cls-a")
    lines = (root / "cls-a" / "metrics.jsonl").read_text().splitlines()
    assert len(first["events"]) == len(lines)
    _, rest = call(url, f"/api/events?name=cls-a&since={first['offset']}")
    assert rest["events"] == [] and rest["offset"] == first["offset"]


def test_run_detail_carries_the_sample_generations(url: str, root: Path) -> None:
    _, sft = call(url, "/api/run?name=sft")
    on_disk = json.loads((root / "sft" / "samples.json").read_text(encoding="utf-8"))
    assert sft["samples"] == on_disk and sft["samples"]["split"] == "eval"
    gens = sft["samples"]["samples"]
    assert gens and all(isinstance(g["before"], str) and isinstance(g["after"], str) for g in gens)
    assert all(g["prompt"].startswith("Repeat the word") and g["reference"] for g in gens)
    assert call(url, "/api/run?name=cls-a")[1]["samples"] is None  # a classifier generates nothing


def test_compare_shows_only_the_keys_that_differ(url: str) -> None:
    status, d = call(url, "/api/compare?names=cls-a,cls-b")
    assert status == 200
    keys = {r["key"] for r in d["diff"]}
    assert "train.lr" in keys and "task" not in keys and "model.name_or_path" not in keys
    assert set(d["events"]) == {"cls-a", "cls-b"}
    assert call(url, "/api/compare?names=cls-a")[0] == 400


def test_files_are_confined_to_the_root(url: str, root: Path, tmp_path: Path) -> None:
    status, text = call(url, "/files/cls-a/report.html")
    assert status == 200 and "<html" in text.lower()
    assert call(url, "/files/..%2F..%2Fetc%2Fpasswd")[0] in (400, 404)
    assert call(url, "/files/cls-a/../../secret.txt")[0] in (400, 404)
    outside = tmp_path / "secret.txt"
    outside.write_text("do not serve")
    (root / "link.txt").symlink_to(outside)
    try:
        status, body = call(url, "/files/link.txt")
        assert status == 400 and "outside" in body["error"]
    finally:
        (root / "link.txt").unlink()
    assert call(url, "/api/run?name=../..")[0] == 400


def test_validation_reports_every_problem_with_its_key(url: str) -> None:
    bad = "task: classification\ntrain: {lr: -1, epochs: zero}\nmodel: {nme: x}\n"
    status, d = call(url, "/api/validate", {"yaml": bad})
    assert status == 200 and not d["ok"]
    text = "\n".join(d["problems"])
    assert "train.lr" in text and "train.epochs" in text and "model.nme" in text
    status, d = call(url, "/api/launch", {"yaml": bad})
    assert status == 400 and "train.lr" in d["error"]
    ok = (Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text()
    assert call(url, "/api/validate", {"yaml": ok})[1]["ok"]


def test_new_run_page_shows_the_memory_plan(url: str) -> None:
    demo = (Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text()
    status, d = call(url, "/api/plan", {"yaml": demo})
    assert status == 200
    text = "\n".join(d["lines"])
    assert "builtin:minilm" in text and "total (peak)" in text and "optimizer" in text
    assert call(url, "/api/plan", {"yaml": "train: {lr: -1}"})[0] == 400


def test_uploads_are_named_and_size_limited(url: str, root: Path) -> None:
    status, d = call(url, "/api/upload?filename=mine.jsonl", raw=b'{"text": "a", "label": "x"}\n')
    assert status == 200 and (root / d["path"]).is_file()
    assert call(url, "/api/upload?filename=..%2Fevil.sh", raw=b"x")[0] == 400
    big = b"x" * (21 * 1024 * 1024)
    assert call(url, "/api/upload?filename=big.jsonl", raw=big)[0] == 413


def test_playground_chats_and_classifies(url: str) -> None:
    _, models = call(url, "/api/models")
    ids = {m["id"]: m["task"] for m in models}
    assert ids == {
        "cls-a/model": "classification",
        "cls-b/model": "classification",
        "sft/model": "sft",
    }
    status, text = call(
        url,
        "/api/chat",
        {
            "model": "sft/model",
            "messages": [{"role": "user", "content": "Repeat the word good."}],
            "max_tokens": 4,
        },
    )
    assert status == 200
    events = [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: ")]
    assert events[-1]["finish"] in ("stop", "length") and events[-1]["tokens"] <= 4
    status, d = call(url, "/api/classify", {"model": "cls-a/model", "text": "I loved it"})
    assert status == 200 and d["label"] in d["scores"] and abs(sum(d["scores"].values()) - 1) < 1e-4
    assert call(url, "/api/classify", {"model": "cls-a/model", "text": "  "})[0] == 400
    assert (
        call(
            url,
            "/api/chat",
            {"model": "cls-a/model", "messages": [{"role": "user", "content": "x"}]},
        )[0]
        == 400
    )
    assert call(url, "/api/classify", {"model": "../x", "text": "a"})[0] == 400


def test_registry_release_and_rollback(url: str, root: Path) -> None:
    reg = root / "registry"
    release(reg, root / "cls-a" / "model", root / "cls-a", {"metric": "accuracy", "value": 0.5})
    status, d = call(
        url, "/api/registry", {"action": "release", "registry": "registry", "run": "cls-b"}
    )
    assert status == 200 and d["current"] == "v2"
    _, regs = call(url, "/api/registries")
    versions = {v["version"]: v for v in regs[0]["versions"]}
    assert versions["v2"]["current"] and not versions["v1"]["current"]
    status, d = call(
        url, "/api/registry", {"action": "rollback", "registry": "registry", "version": "v1"}
    )
    assert status == 200 and d["previous"] == "v2"
    _, regs = call(url, "/api/registries")
    assert {v["version"]: v["current"] for v in regs[0]["versions"]} == {"v1": True, "v2": False}


def test_monitor_page_data_with_alerts(url: str, root: Path) -> None:
    from runkit import cli_exit, sentiment_rows, write_jsonl

    batch = write_jsonl(root / "batch.jsonl", sentiment_rows(24, seed=5))
    assert cli_exit("monitor", "record", str(root / "cls-a" / "model"), "--data", str(batch)) == 0
    status, mons = call(url, "/api/monitors")
    assert status == 200 and len(mons) == 1
    m = mons[0]
    assert len(m["records"]) == 1 and m["records"][0][4] == 24
    assert {c["status"] for c in m["checks"]} <= {"OK", "ALERT", "n/a"} and m["checks"]


def test_a_token_is_required_beyond_loopback(root: Path) -> None:
    from lmtune.ui.app import ui_token

    assert ui_token("127.0.0.1", None) is None and ui_token("0.0.0.0", None)
    with ui_in_thread(root, token="s3cret") as u:
        assert call(u, "/api/runs")[0] == 401
        assert call(u, "/")[0] == 401
        assert call(u, "/api/runs", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(u, "/?token=s3cret")[0] == 200
        assert call(u, "/api/runs?token=wrong")[0] == 401


def test_the_cli_starts_fast_and_prints_its_url(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtune", "ui", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        elapsed = time.perf_counter() - start
        assert "http://127.0.0.1:" in line, line
        print(f"lmtune ui printed its URL after {elapsed:.2f} s")
        status, text = call(line.split()[-1].rsplit("/", 1)[0], "/")
        assert status == 200 and "/static/app.js" in text
    finally:
        proc.terminate()
        proc.wait(10)
