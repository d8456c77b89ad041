"""`lmtune monitor` end to end through the CLI entry point, on a tiny classifier trained by the CLI.

The commands run in-process through lmtune.cli.main (argument parsing, error policy and exit
codes exactly as the console script) because a fresh interpreter per command would cost
most of this tier's time budget in imports.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from runkit import cli_exit, run_cli, sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SHIFT_WORDS = [
    "shampoo",
    "conditioner",
    "bottle",
    "leaked",
    "greasy",
    "scent",
    "delivery",
    "refund",
    "packaging",
    "seller",
    "lotion",
    "cracked",
    "sticky",
    "residue",
    "warranty",
    "battery",
]


def lmtune(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    return run_cli(capsys, *args)


def shifted_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Another domain: long rows of unseen words, 90% negative."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(SHIFT_WORDS) for _ in range(rng.randint(18, 30)))
        rows.append(
            {
                "text": f"{text} was {rng.choice(['awful', 'great'])}",
                "label": "pos" if i % 10 == 0 else "neg",
            }
        )
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier trained through `lmtune train` (test split: the release metrics)."""
    tmp = tmp_path_factory.mktemp("monitor")
    data = write_jsonl(tmp / "train.jsonl", sentiment_rows(120))
    code = cli_exit(
        "train",
        str(ROOT / "configs" / "demo.yaml"),
        f"data.train={data}",
        f"model.name_or_path={tiny_bert_dir(tmp)}",
        f"run.output_dir={tmp / 'run'}",
        "model.max_length=32",
        "train.epochs=8",
        "train.lr=5e-3",
        "train.head_lr=null",
        "train.batch_size=8",
        "adapter.type=full",
        "train.precision=fp32",
        "train.eval_before=false",
        "--quiet",
    )
    assert code == 0
    return tmp / "run"


def healthy_batches(tmp: Path) -> list[Path]:
    """Two batches of 120 rows from the training rows' generator (other random draws)."""
    rows = sentiment_rows(120, seed=7) + sentiment_rows(120, seed=8)
    random.Random(3).shuffle(rows)
    return [
        write_jsonl(tmp / f"week{i + 1}.jsonl", rows[i * 120 : (i + 1) * 120]) for i in range(2)
    ]


def test_profile_is_saved_with_the_model(run: Path) -> None:
    prof = json.loads((run / "model" / "data_profile.json").read_text())
    train_rows = (run / "data" / "train.jsonl").read_text().splitlines()
    assert prof["rows"] == len(train_rows) and sum(prof["labels"].values()) == len(train_rows)
    assert set(prof["labels"]) == {"neg", "pos"} and "great" in prof["vocab"]["words"]


def test_healthy_batches_pass_then_a_shifted_batch_alerts(
    run: Path, tmp_path: Path, capsys
) -> None:
    db = tmp_path / "history.db"
    for batch in healthy_batches(tmp_path):
        code, out = lmtune(
            capsys, "monitor", "record", str(run), "--data", str(batch), "--db", str(db)
        )
        assert code == 0, out
        assert f"recorded '{batch.stem}' (120 rows)" in out
    code, out = lmtune(capsys, "monitor", "status", str(run), "--db", str(db))
    assert code == 0, out
    assert "all checks OK" in out and "ALERT" not in out

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
        rows = conn.execute(
            "SELECT batch, kind, n, metrics, drift FROM records ORDER BY id"
        ).fetchall()
    assert [(b, k, n) for b, k, n, _, _ in rows] == [
        ("week1", "labelled", 120),
        ("week2", "labelled", 120),
    ]
    first = json.loads(rows[0][3])
    assert first["accuracy"] > 0.9  # the tiny model learnt the task, so it is a fair baseline
    for _, _, _, _, drift in rows:
        assert json.loads(drift)["length_psi"] < 0.2

    shifted = write_jsonl(tmp_path / "other_domain.jsonl", shifted_rows(60))
    code, out = lmtune(
        capsys, "monitor", "record", str(run), "--data", str(shifted), "--db", str(db)
    )
    assert code == 0, out
    code, out = lmtune(capsys, "monitor", "status", str(run), "--db", str(db))
    assert code == 1, out
    alert_line = out[out.index("ALERT:") :]
    for check in ("metric_vs_release", "length_psi", "length_ks", "oov_increase", "label_psi"):
        assert check in alert_line, (check, alert_line)
    assert "days_since_release" not in alert_line

    report_dir = tmp_path / "report"
    code, out = lmtune(
        capsys, "monitor", "report", str(run), "--db", str(db), "--out", str(report_dir)
    )
    assert code == 0, out
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "other_domain" in html
    summary = json.loads((report_dir / "monitor.json").read_text())
    assert [r["batch"] for r in summary["records"]] == ["week1", "week2", "other_domain"]
    assert "length_psi" in summary["alerts"] and summary["thresholds"]["psi_threshold"] == 0.2


def test_update_frequency_alert_with_an_injected_clock(
    run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry whose current version was released on a known date (metrics.json released_at).
    registry = tmp_path / "registry"
    shutil.copytree(run / "model", registry / "v1")
    (registry / "v1" / "metrics.json").write_text(
        json.dumps({"released_at": "2025-01-01T00:00:00Z", "test": {"accuracy": 1.0}})
    )
    (registry / "current").write_text("v1\n")
    batch = healthy_batches(tmp_path)[0]
    code, out = lmtune(
        capsys,
        "monitor",
        "record",
        str(registry),
        "--data",
        str(batch),
        "--now",
        "2025-01-08T00:00:00Z",
    )
    assert code == 0, out
    assert "for v1" in out and (registry / "monitor.db").is_file()

    code, out = lmtune(capsys, "monitor", "status", str(registry), "--now", "2025-01-10T00:00:00Z")
    assert code == 0, out
    code, out = lmtune(capsys, "monitor", "status", str(registry), "--now", "2025-06-01T00:00:00Z")
    assert code == 1 and "ALERT: days_since_release" in out, out
    assert "151" in out  # days from 2025-01-01 to 2025-06-01
    monkeypatch.setenv("LMTUNE_NOW", "2025-02-01T00:00:00Z")
    code, out = lmtune(
        capsys, "monitor", "status", str(registry), "--set", "max_days_since_release=30"
    )
    assert code == 1 and "ALERT: days_since_release" in out, out
    code, out = lmtune(
        capsys, "monitor", "status", str(registry), "--set", "max_days_since_release=null"
    )
    assert code == 0, out
    # A new release: v1's records stay in the history but are not judged against v2.
    shutil.copytree(registry / "v1", registry / "v2", ignore=shutil.ignore_patterns("metrics.json"))
    (registry / "v2" / "metrics.json").write_text(
        json.dumps({"released_at": "2025-05-30T00:00:00Z"})
    )
    (registry / "current").write_text("v2\n")
    monkeypatch.delenv("LMTUNE_NOW")
    code, out = lmtune(capsys, "monitor", "status", str(registry), "--now", "2025-06-01T00:00:00Z")
    assert code == 0 and "checks for v2" in out and re.search(r"input_drift\W+n/a", out), out


def test_serving_log_records_unlabelled_drift(run: Path, tmp_path: Path, capsys) -> None:
    log = tmp_path / "predictions.jsonl"
    entries = [
        {
            "time": "2025-01-01T00:00:00Z",
            "endpoint": "/v1/classify",
            "model_version": None,
            "input": r["text"],
            "output": "neg",
            "label": "neg",
            "scores": {"neg": 0.8, "pos": 0.2},
            "latency_ms": 3.0,
        }
        for r in shifted_rows(40, seed=1)
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    db = tmp_path / "m.db"
    code, out = lmtune(
        capsys, "monitor", "record", str(run), "--predictions", str(log), "--db", str(db)
    )
    assert code == 0, out
    with sqlite3.connect(db) as conn:
        kind, n, metrics, stats = conn.execute(
            "SELECT kind, n, metrics, input_stats FROM records"
        ).fetchone()
    assert (kind, n, json.loads(metrics)) == ("predictions", 40, {})
    assert json.loads(stats)["pred_counts"] == {"neg": 40}
    code, out = lmtune(capsys, "monitor", "status", str(run), "--db", str(db))
    assert code == 1 and "prediction_psi" in out[out.index("ALERT:") :], out
    assert re.search(r"metric_vs_release\W+n/a", out)  # no labels in a serving log: no metric check


def test_user_errors_exit_2(run: Path, tmp_path: Path, capsys) -> None:
    code, out = lmtune(
        capsys,
        "monitor",
        "record",
        str(run),
        "--data",
        str(tmp_path / "missing.jsonl"),
        "--db",
        str(tmp_path / "m.db"),
    )
    assert code == 2 and "missing.jsonl" in out and "no such file" in out and "Traceback" not in out
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("{not json\n" * 5 + json.dumps({"text": "fine", "label": "pos"}) + "\n")
    code, out = lmtune(
        capsys,
        "monitor",
        "record",
        str(run),
        "--data",
        str(corrupt),
        "--db",
        str(tmp_path / "m.db"),
    )
    assert code == 2 and "corrupt.jsonl" in out and "line 1" in out and "Traceback" not in out
    code, out = lmtune(capsys, "monitor", "record", str(run), "--db", str(tmp_path / "m.db"))
    assert code == 2 and "--data" in out and "--predictions" in out
    bad_db = tmp_path / "bad.db"
    bad_db.write_bytes(b"this is not sqlite" * 100)
    code, out = lmtune(capsys, "monitor", "status", str(run), "--db", str(bad_db))
    assert code == 2 and "bad.db" in out and "not an lmtune monitor database" in out
    code, out = lmtune(capsys, "monitor", "status", str(tmp_path))
    assert code == 2 and "lmtune_model.json" in out
    code, out = lmtune(capsys, "monitor", "status", str(run), "--set", "psi_threshold=-1")
    assert code == 2 and "monitor.psi_threshold" in out
    assert not (tmp_path / "m.db").exists()  # failed records leave no history behind


def test_registry_release_is_monitored_as_its_version(run: Path, tmp_path: Path, capsys) -> None:
    """A version released by the registry (ops/registry.py) is monitored under its own name."""
    from datetime import datetime, timedelta

    from lmtune.ops.registry import release

    registry = tmp_path / "registry"
    version, folder = release(registry, run / "model", run, {"test": {"accuracy": 1.0}})
    released = datetime.fromisoformat(
        json.loads((folder / "metrics.json").read_text())["released_at"].replace("Z", "+00:00")
    )
    assert (folder / "data_profile.json").is_file()
    code, out = lmtune(
        capsys, "monitor", "record", str(registry), "--data", str(healthy_batches(tmp_path)[0])
    )
    assert code == 0 and f"for {version}:" in out, out
    later = (released + timedelta(days=100)).isoformat()
    code, out = lmtune(
        capsys,
        "monitor",
        "status",
        str(folder),
        "--db",
        str(registry / "monitor.db"),
        "--now",
        later,
    )
    assert code == 1 and f"checks for {version}" in out and "ALERT: days_since_release" in out, out
