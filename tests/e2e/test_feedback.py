"""`lmtune feedback` through the real CLI, answers piped into stdin: every answer is saved at
once, invalid input asks again, end of input ends cleanly, a second session resumes, and the
file trains a reward model as `data.format: pairwise`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runkit import tiny_causal_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def lmtune(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lmtune", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_feedback_session_resume_and_training(tmp_path: Path) -> None:
    model = tiny_causal_dir(tmp_path)  # a plain transformers folder works as --model too
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "Describe the sea."},
            {"prompt": [{"role": "user", "content": "Name a fruit."}]},
            {"prompt": "Write a greeting."},
            {"prompt": "What do owls eat?"},
            {"prompt": "Suggest a hobby."},
        ],
    )
    out = tmp_path / "fb" / "prefs.jsonl"
    args = (
        "feedback",
        "--model",
        str(model),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--seed",
        "3",
    )

    # Session 1: a (with a note), an invalid answer then b, a tie; end of input at prompt 4.
    r = lmtune(*args, stdin="a\nclearer\nx\nB\n\nt\n\n")
    assert r.returncode == 0, r.stderr
    assert "'x' is not one of a, b, t, s, q" in r.stdout
    rows = _rows(out)
    assert [x["preference"] for x in rows] == ["a", "b", "tie"]
    assert rows[0]["note"] == "clearer" and rows[1]["note"] == ""
    assert rows[1]["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert set(rows[0]) == {
        "prompt",
        "response_a",
        "response_b",
        "preference",
        "note",
        "model",
        "time",
    }
    assert rows[0]["model"] == str(model) and rows[0]["response_a"] != rows[0]["response_b"]
    assert "This session: a 1, b 1, tie 1, skip 0" in r.stdout and str(out) in r.stdout
    assert "=== 4/5 (prompt 4) ===" in r.stdout  # shown, but not answered before the input ended

    # A crash in the middle of a write leaves a cut-off line: the next session removes it.
    with out.open("a") as f:
        f.write('{"prompt": "What do owls')
    # Session 2 resumes at prompt 4 (same samples: seeded per prompt): skip it, then quit.
    r = lmtune(*args, stdin="s\n\nq\n")
    assert r.returncode == 0, r.stderr
    assert "removing an incomplete last line" in r.stdout
    assert "3 already in" in r.stdout and "=== 1/2 (prompt 4) ===" in r.stdout
    rows = _rows(out)
    assert [x["preference"] for x in rows] == ["a", "b", "tie", "skip"]
    assert rows[3]["prompt"] == "What do owls eat?"
    assert f"--- A ---\n{rows[3]['response_a']}\n" in r.stdout
    assert "1 prompt(s) left" in r.stdout

    # Session 3: an answer whose note meets the end of input is still saved.
    r = lmtune(*args, stdin="b\n")
    assert r.returncode == 0, r.stderr
    assert [x["preference"] for x in _rows(out)] == ["a", "b", "tie", "skip", "b"]
    assert "File " + str(out) + ": 5 row(s) (a 1, b 2, tie 1, skip 1)" in r.stdout
    r = lmtune(*args, stdin="")
    assert r.returncode == 0 and "0 to go" in r.stdout

    # The file trains a reward model as it is: ties and skips are dropped with their reason.
    cfg = tmp_path / "reward.yaml"
    cfg.write_text(
        f"run: {{output_dir: {tmp_path / 'rm'}}}\ntask: reward\n"
        f"model: {{name_or_path: {model}, max_length: 64}}\nadapter: {{type: full}}\n"
        f"data: {{train: {out}, format: pairwise, split: {{eval: 0.0}}}}\n"
        "train: {epochs: 1, batch_size: 1, eval_before: false, precision: fp32}\n"
    )
    r = lmtune("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rm" / "data_report.json").read_text())
    assert report["drops"]["by_stage"] == {"ties": 2}
    reasons = sorted(
        json.loads(x)["reason"].split(" (")[0]
        for x in (tmp_path / "rm" / "rejects.jsonl").read_text().splitlines()
    )
    assert reasons == ["preference is a tie", "preference is skip"]
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["data"]["train"] == 3


def test_feedback_user_errors(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"question": "no prompt"}])
    r = lmtune(
        "feedback",
        "--model",
        str(tmp_path),
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "o.jsonl"),
    )
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr
    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "hi"}])
    r = lmtune(
        "feedback",
        "--model",
        str(tmp_path),
        "--prompts",
        str(good),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--temperature",
        "0",
    )
    assert r.returncode == 2 and "--temperature must be above 0" in r.stderr
    (tmp_path / "bad.jsonl").write_text("not json\n")
    r = lmtune(
        "feedback",
        "--model",
        str(tiny_causal_dir(tmp_path)),
        "--prompts",
        str(good),
        "--out",
        str(tmp_path / "bad.jsonl"),
    )
    assert r.returncode == 2 and "bad.jsonl line 1 is not a feedback row" in r.stderr
