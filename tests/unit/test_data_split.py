"""Splitting (sizes, stratification, determinism), balancing and class weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from lmtune.data.split import balance, class_weights, split_indices, split_size


def test_split_sizes_cover_every_row_once() -> None:
    idx = split_indices(1000, 0.1, 0.2, seed=0)
    assert (len(idx["train"]), len(idx["eval"]), len(idx["test"])) == (700, 100, 200)
    assert sorted(idx["train"] + idx["eval"] + idx["test"]) == list(range(1000))
    assert split_size(5, 0.1) == 1 and split_size(1, 0.5) == 0 and split_size(10, 0.0) == 0
    tiny = split_indices(2, 0.5, 0.4, seed=0)
    assert len(tiny["train"]) == 1  # train always keeps a row


def test_split_is_deterministic_and_seed_dependent() -> None:
    assert split_indices(500, 0.1, 0.1, 7) == split_indices(500, 0.1, 0.1, 7)
    assert split_indices(500, 0.1, 0.1, 7) != split_indices(500, 0.1, 0.1, 8)
    labels = ["a", "b", "c"] * 50
    assert split_indices(150, 0.2, 0, 1, labels) == split_indices(150, 0.2, 0, 1, labels)


def test_split_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "import json; from lmtune.data.split import split_indices; "
        "print(json.dumps(split_indices(60, 0.2, 0.1, 3, ['x', 'y', 'zz'] * 20)))"
    )
    outs = set()
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
    assert len(outs) == 1
    assert json.loads(outs.pop()) == split_indices(60, 0.2, 0.1, 3, ["x", "y", "zz"] * 20)


def test_stratified_split_keeps_label_proportions() -> None:
    labels = ["pos"] * 700 + ["neg"] * 200 + ["mid"] * 100
    idx = split_indices(1000, 0.1, 0.1, seed=0, labels=labels)
    for split, expected in (
        ("eval", {"pos": 70, "neg": 20, "mid": 10}),
        ("test", {"pos": 70, "neg": 20, "mid": 10}),
        ("train", {"pos": 560, "neg": 160, "mid": 80}),
    ):
        assert Counter(labels[i] for i in idx[split]) == expected


def test_single_row_label_stays_in_train() -> None:
    labels = ["a"] * 9 + ["rare"]
    idx = split_indices(10, 0.3, 0.0, seed=0, labels=labels)
    assert 9 in idx["train"]
    assert len(idx["eval"]) == 3 and all(labels[i] == "a" for i in idx["eval"])


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{lab}{i}", "label": lab} for lab, n in counts.items() for i in range(n)]


def test_undersample() -> None:
    rows = _rows({"a": 10, "b": 3, "c": 5})
    out, dropped, info = balance(rows, "label", "undersample", seed=0)
    assert Counter(r["label"] for r in out) == {"a": 3, "b": 3, "c": 3}
    assert len(dropped) == 9 and all("undersampled" in reason for _, reason in dropped)
    assert info["before"] == {"a": 10, "b": 3, "c": 5} and info["after"] == {"a": 3, "b": 3, "c": 3}
    assert out == [r for r in rows if r in out]  # input order kept
    again, _, _ = balance(rows, "label", "undersample", seed=0)
    assert again == out


def test_oversample_by_group() -> None:
    rows = [{"text": str(i), "_group": "de" if i < 2 else "en"} for i in range(6)]
    out, dropped, info = balance(rows, "_group", "oversample", seed=1)
    assert Counter(r["_group"] for r in out) == {"de": 4, "en": 4}
    assert dropped == [] and info["rows_added"] == 2
    assert out[:6] == rows and all(r["_group"] == "de" for r in out[6:])


def test_class_weights_balanced_formula() -> None:
    labels = ["a"] * 6 + ["b"] * 3 + ["c"]
    w = class_weights(labels, ["a", "b", "c"])
    assert w == [round(10 / (3 * 6), 6), round(10 / (3 * 3), 6), round(10 / 3, 6)]
    assert class_weights(["a", "a", "b", "b"], ["a", "b", "z"]) == [1.0, 1.0, 1.0]
