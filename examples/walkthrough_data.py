"""Data for examples/walkthrough.sh: healthy and shifted batches for `lmtune monitor`.

Bundled mode (no download, no ../shared):

    python examples/walkthrough_data.py bundled RUN_DIR OUT_DIR

writes week1.jsonl (the release's own held-out test rows, RUN_DIR/data/test.jsonl) and
week2.jsonl (186 fresh reviews from examples/make_reviews.py with another seed: new traffic
from the same source) into OUT_DIR. The shifted batch is examples/data/app_reviews_shifted.jsonl.

Real mode (the datasets beside the repo in ../shared/data; nothing is copied into the repo):

    python examples/walkthrough_data.py real OUT_DIR

writes, into OUT_DIR:
- sst_train.jsonl: 2,000 SST-5 training sentences as binary sentiment (neutral dropped;
  0-1 -> 0, 3-4 -> 1): the sentence-level SST-2 training set. SST-2's own train.tsv mixes in
  short phrases, whose lengths would not match the full sentences of SST-2 test.
- sst2_release_test.jsonl: 600 SST-2 test sentences, the release-time test split.
- sst2_week1..3.jsonl: the other 1,221 SST-2 test sentences as three healthy batches of 407.
- amazon_beauty.jsonl: 400 Amazon All_Beauty reviews (deduplicated on reviewer, text and
  rating as SOURCE.md advises; 3 stars dropped; 1-2 stars -> 0, 4-5 -> 1): another domain.

tests/slow/test_monitor_real.py and tests/slow/test_walkthrough_real.py use the same functions.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHIFTED = ROOT / "examples" / "data" / "app_reviews_shifted.jsonl"
REAL_FILES = (
    "sst5/stsa.fine.train",
    "sst2/test.tsv",
    "sst2/dev.tsv",
    "amazon_reviews_2018_5core/All_Beauty_5.json",
)
RELEASE_TEST_ROWS, HEALTHY_BATCH_ROWS = 600, 407


def missing_real_files(data: Path = SHARED_DATA) -> list[Path]:
    """The real-data files the walkthrough needs that are absent (empty when all are there)."""
    return [data / f for f in REAL_FILES if not (data / f).is_file()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sst_sentences_binary(n: int, data: Path = SHARED_DATA) -> list[dict[str, str]]:
    """n SST-5 training sentences as binary sentiment (neutral dropped), seeded order."""
    rows = []
    for line in (data / "sst5" / "stsa.fine.train").read_text(encoding="utf-8").splitlines():
        label, text = line.split(" ", 1)
        if label != "2":
            rows.append({"text": text, "label": "0" if label in ("0", "1") else "1"})
    random.Random(0).shuffle(rows)
    return rows[:n]


def sst2_test(data: Path = SHARED_DATA) -> list[dict[str, str]]:
    """The 1,821 labelled SST-2 test sentences in a seeded order (the file is sorted by label)."""
    lines = (data / "sst2" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [{"text": t, "label": lab} for lab, t in (line.split("\t", 1) for line in lines)]
    random.Random(1).shuffle(rows)
    return rows


def amazon_beauty(n: int, data: Path = SHARED_DATA) -> list[dict[str, str]]:
    """n All_Beauty reviews as binary sentiment: deduplicated, 3 stars dropped."""
    seen, rows = set(), []
    path = data / "amazon_reviews_2018_5core" / "All_Beauty_5.json"
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        key = (r.get("reviewerID"), r.get("reviewText"), r.get("overall"))
        if not r.get("reviewText") or r["overall"] == 3.0 or key in seen:
            continue
        seen.add(key)
        rows.append({"text": r["reviewText"], "label": "0" if r["overall"] <= 2.0 else "1"})
    random.Random(2).shuffle(rows)
    return rows[:n]


def prepare_real(out: Path, data: Path = SHARED_DATA) -> dict[str, Path]:
    """Write the real-data files of the walkthrough into out (see the module docstring)."""
    missing = missing_real_files(data)
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(map(str, missing))}: the real datasets "
            f"live beside the repo in {data}"
        )
    test = sst2_test(data)
    healthy = test[RELEASE_TEST_ROWS:]
    files = {
        "train": write_jsonl(out / "sst_train.jsonl", sst_sentences_binary(2000, data)),
        "release_test": write_jsonl(out / "sst2_release_test.jsonl", test[:RELEASE_TEST_ROWS]),
    }
    for i in range(3):
        rows = healthy[i * HEALTHY_BATCH_ROWS : (i + 1) * HEALTHY_BATCH_ROWS]
        files[f"week{i + 1}"] = write_jsonl(out / f"sst2_week{i + 1}.jsonl", rows)
    files["shifted"] = write_jsonl(out / "amazon_beauty.jsonl", amazon_beauty(400, data))
    return files


def prepare_bundled(
    run_dir: Path, out: Path, seed: int = 8, per_label: int = 62
) -> dict[str, Path]:
    """week1: the run's held-out test rows; week2: fresh generated reviews (another seed)."""
    out.mkdir(parents=True, exist_ok=True)
    week1 = shutil.copyfile(run_dir / "data" / "test.jsonl", out / "week1.jsonl")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "make_reviews.py"),
            "--out",
            str(out / "week2.jsonl"),
            "--seed",
            str(seed),
            "--per-label",
            str(per_label),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {"week1": Path(week1), "week2": out / "week2.jsonl", "shifted": SHIFTED}


def _shown(path: Path) -> str:
    """path relative to the current folder when it is inside it (shorter output)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    b = sub.add_parser(
        "bundled", help="healthy batches from a pipeline run of configs/pipeline_demo.yaml"
    )
    b.add_argument("run_dir", type=Path)
    b.add_argument("out", type=Path)
    r = sub.add_parser("real", help="SST and Amazon files from ../shared/data")
    r.add_argument("out", type=Path)
    r.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared datasets folder")
    args = ap.parse_args(argv)
    try:
        files = (
            prepare_bundled(args.run_dir, args.out)
            if args.mode == "bundled"
            else prepare_real(args.out, args.data)
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in files.items():
        rows = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"{name:>12}: {_shown(path)} ({rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
