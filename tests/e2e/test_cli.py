"""End-to-end through the real `lmtune` console script (subprocesses, like a user)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runkit import instruction_rows, sentiment_rows, tiny_bert_dir, tiny_causal_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
LMTUNE = [sys.executable, "-m", "lmtune"]


def lmtune(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [*LMTUNE, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=e, timeout=600
    )


def test_config_show_resolves_overrides() -> None:
    r = lmtune("config", "show", "configs/demo.yaml", "train.lr=0.5", "adapter.r=4")
    assert r.returncode == 0, r.stderr
    assert "lr: 0.5" in r.stdout and "r: 4" in r.stdout


def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1, batch_sise: 3}\n")
    r = lmtune("train", str(bad))
    assert r.returncode == 2
    assert "train.lr" in r.stderr and "train.batch_sise" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr
    r = lmtune("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{train: {tmp_path / 'nope.jsonl'}}}\nrun: {{output_dir: {tmp_path / 'run'}}}\n"
    )
    r = lmtune("train", str(cfg))
    assert r.returncode == 2 and "nope.jsonl" in r.stderr and "Traceback" not in r.stderr
    r = lmtune("eval", str(tmp_path), "--data", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # A mistyped option is a usage error, not "internal error" (typer raises its vendored click's).
    r = lmtune("train", "configs/demo.yaml", "--set", "train.lr=1")
    assert r.returncode == 2 and "No such option" in r.stderr and "internal error" not in r.stderr


def test_bad_rows_are_rejected_with_line_numbers(tmp_path: Path) -> None:
    rows = sentiment_rows(40)
    lines = [json.dumps(r) for r in rows]
    lines[4] = json.dumps({"text": "", "label": "pos"})
    lines[9] = "{not json"
    lines[14] = json.dumps({"txt": "wrong column", "label": "neg"})
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    model_dir = tiny_bert_dir(tmp_path)
    r = lmtune(
        "prepare",
        "configs/demo.yaml",
        f"data.train={data}",
        f"model.name_or_path={model_dir}",
        f"run.output_dir={tmp_path / 'run'}",
    )
    assert r.returncode == 0, r.stderr
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(x["line"] for x in rejects) == [5, 10, 15]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report
    r = lmtune(
        "prepare",
        "configs/demo.yaml",
        f"data.train={data}",
        f"model.name_or_path={model_dir}",
        f"run.output_dir={tmp_path / 'run2'}",
        "data.max_bad_fraction=0.01",
    )
    assert r.returncode == 2 and "rejects.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_classification_train_eval_predict_export(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    run = tmp_path / "run"
    r = lmtune(
        "train",
        "configs/demo.yaml",
        f"data.train={data}",
        f"model.name_or_path={model_dir}",
        f"run.output_dir={run}",
        "train.epochs=6",
        "train.lr=5e-3",
        "train.head_lr=null",
        "train.batch_size=8",
        "adapter.type=full",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8
    r = lmtune("eval", str(run), "--data", str(data), "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["rows"] == 120 and ev["accuracy"] > 0.8
    texts = tmp_path / "t.txt"
    texts.write_text("the movie was great 7\nthe food was awful 8\n")
    r = lmtune("predict", str(run), "--input", str(texts))
    assert r.returncode == 0, r.stderr
    preds = [json.loads(x) for x in r.stdout.splitlines()]
    assert [p["label"] for p in preds] == ["pos", "neg"]
    r = lmtune("export", str(run), str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.id2label == {0: "neg", 1: "pos"}


def test_sft_train_generate_resume(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(80))
    run = tmp_path / "run"
    args = [
        "configs/sft_alpaca_lora.yaml",
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        f"run.output_dir={run}",
        "model.max_length=160",
        "train.epochs=2",
        "train.lr=1e-2",
        "data.template=alpaca",
        "--quiet",
    ]
    r = lmtune("train", *args)
    assert r.returncode == 0, r.stderr
    r = lmtune("generate", str(run), "--prompt", "Repeat the word happy.", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[0])
    assert out["prompt"] == "Repeat the word happy." and isinstance(out["completion"], str)
    r = lmtune("train", *args, "--resume")  # already finished: resumes at the end, trains nothing
    assert r.returncode == 0, r.stderr
    r = lmtune("export", str(run), str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


# The strategy matrix runs sft-lora-ddp (the same case through `--nproc 2`) in make test.
@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_match_one(tmp_path: Path) -> None:
    """2 gloo processes with batch 4 each == 1 process with batch 8 (same global batch)."""
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(64))
    common = [
        "configs/sft_alpaca_lora.yaml",
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        "model.max_length=160",
        "train.epochs=1",
        "train.lr=1e-2",
        "data.template=alpaca",
        "adapter.dropout=0.0",
        "train.log_every=1",
        "--quiet",
    ]
    one = lmtune("train", *common, f"run.output_dir={tmp_path / 'one'}", "train.batch_size=8")
    assert one.returncode == 0, one.stderr
    two = lmtune(
        "train", *common, f"run.output_dir={tmp_path / 'two'}", "train.batch_size=4", "--nproc", "2"
    )
    assert two.returncode == 0, two.stderr
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2

    def losses(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [e["loss"] for e in map(json.loads, lines) if e["event"] == "train"]

    a, b = losses("one"), losses("two")
    assert len(a) == len(b) >= 3
    assert abs(a[0] - b[0]) < 1e-5, (a, b)  # same weights, same examples: same first loss
    # Later steps differ only by float summation order (gradients summed across ranks), which
    # Adam's normalisation amplifies slightly; a wrong split or scaling would be off by >1e-2.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3, (a, b)


# make test shares a full fine-tune's reference pass over 2 processes in the strategy matrix's
# kto-full-ddp case (the cache code dpo and kto share); the dpo cases run with the slow matrix.
@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_share_the_dpo_reference_pass(tmp_path: Path) -> None:
    """Full-FT DPO on 2 processes: each scores half the pairs for the reference, all-gathered;
    the cached reference and the first loss equal the 1-process run's."""
    pairs = [
        {
            "prompt": f"How was {w} number {i}?",
            "chosen": f"it was {w}",
            "rejected": f"it was not {w}",
        }
        for i, w in enumerate(["good", "fine", "nice", "great"] * 6)
    ]
    common = [
        "configs/dpo_lora.yaml",
        f"model.name_or_path={tiny_causal_dir(tmp_path, 'llama')}",
        f"data.train={write_jsonl(tmp_path / 'pairs.jsonl', pairs)}",
        "data.format=auto",
        "adapter.type=full",
        "model.max_length=64",
        "train.max_steps=2",
        "train.grad_accum=1",
        "train.log_every=1",
        "train.eval_before=false",
        "--quiet",
    ]
    one = lmtune("train", *common, f"run.output_dir={tmp_path / 'one'}", "train.batch_size=8")
    assert one.returncode == 0, one.stderr
    two = lmtune(
        "train", *common, f"run.output_dir={tmp_path / 'two'}", "train.batch_size=4", "--nproc", "2"
    )
    assert two.returncode == 0, two.stderr
    ref = [
        json.loads((tmp_path / r / "reference_logps.json").read_text())["logps"]
        for r in ("one", "two")
    ]
    assert ref[0].keys() == ref[1].keys() and len(ref[0]) == 24
    assert max(abs(a - b) for k in ref[0] for a, b in zip(ref[0][k], ref[1][k], strict=True)) < 1e-4

    def first_loss(run: str) -> float:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return next(e["loss"] for e in map(json.loads, lines) if e["event"] == "train")

    assert abs(first_loss("one") - first_loss("two")) < 1e-5


def test_first_hour_habits_piped_log_and_a_rerun_into_the_same_folder(tmp_path: Path) -> None:
    """TRL-style flags, no task: key, stdout piped (as under nohup/Slurm): plain lines, the
    inferred task, the report path; a second run into the folder is refused with the fix."""
    model_dir = tiny_causal_dir(tmp_path, "llama")
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(40))
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"base_model: {model_dir}\ndata: {{train: {data}, template: alpaca}}\n")
    run = tmp_path / "run"
    args = ["--config", str(cfg), "--output_dir", str(run), "--num_epochs", "1"]
    r = lmtune("train", *args, "--learning_rate", "1e-2", "--cutoff_len", "160")
    assert r.returncode == 0, r.stderr
    assert "config: task sft (inferred from the instruction rows" in r.stderr
    assert "config: train.lr (given as learning_rate)" in r.stderr
    out = r.stdout.splitlines()
    steps = [line for line in out if line.startswith("step ")]
    assert steps and steps[0].startswith("step 1/") and "| epoch 1 | loss " in steps[0]
    assert all(" tok/s | elapsed " in line and "| eta " in line for line in steps)
    assert len(steps) == int(steps[0].split("/")[1].split()[0])  # a short run logs every step
    evals = [line for line in out if line.startswith("eval step ")]
    assert evals and re.search(r"eval_tokens \d+ eval_examples \d+$", evals[-1]), evals
    assert any(line.startswith("precision: ") for line in out)
    assert out[-2:] == [f"run folder: {run}", f"report: {run / 'report.html'}"]
    config = json.loads((run / "model" / "lmtune_model.json").read_text())
    assert config["task"] == "sft" and config["run_name"] == "mine"
    r = lmtune("train", *args)
    assert r.returncode == 2 and "holds a previous run" in r.stderr, r.stderr
    assert "--resume" in r.stderr and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_config_show_notes_aliases_and_bad_values_exit_2(tmp_path: Path) -> None:
    r = lmtune("config", "show", "configs/demo.yaml", "--learning_rate", "1e-4", "lora_r=4")
    assert r.returncode == 0, r.stderr
    assert "lr: 0.0001" in r.stdout and "r: 4" in r.stdout
    assert "# train.lr (given as learning_rate)" in r.stdout
    assert "# adapter.r (given as lora_r)" in r.stdout
    r = lmtune("config", "show", "train", "--fields")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("train.") for line in lines)
    lr = next(line for line in lines if line.startswith("train.lr\t"))
    assert lr.endswith("(lora/dora 2e-4, full 5e-5, head 1e-3).")  # one line, never wrapped
    r = lmtune("train", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "<bool>" not in r.stdout
    r = lmtune("train", "configs/demo.yaml", "train.max_stepz=3")
    assert r.returncode == 2 and "did you mean train.max_steps?" in r.stderr
    r = lmtune("train", "configs/demo.yaml", "train.max_steps=0")
    assert r.returncode == 2 and "train.max_steps" in r.stderr and "-1" in r.stderr
    taken = tmp_path / "taken"
    taken.write_text("a file")
    r = lmtune("prepare", "configs/demo.yaml", f"run.output_dir={taken}")
    assert r.returncode == 2 and f"run.output_dir {taken} is a file" in r.stderr
    assert "Traceback" not in r.stderr
