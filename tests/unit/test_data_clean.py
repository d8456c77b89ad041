"""Normalisation, control characters, length limits, exact and near dedupe, leakage."""

from __future__ import annotations

import numpy as np

from lmtune.config import CleanConfig
from lmtune.data import dedupe as dd
from lmtune.data.clean import RowCleaner, length_problem, normalize_text, remove_control
from lmtune.data.formats import RowError

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu one two three four five six seven eight nine ten eleven twelve thirteen"
).split()


def _text(seed: int, n: int = 80) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=n))


def test_normalize_text() -> None:
    assert normalize_text("  a \t  b\u00a0c  ") == "a b c"
    assert normalize_text("line1\r\nline2\rline3") == "line1\nline2\nline3"
    assert normalize_text("a\n\n\n\n\nb") == "a\n\nb"
    assert normalize_text("a   \nb") == "a\nb"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC composes
    # Indentation is kept so code in SFT data still runs.
    assert normalize_text("def f():\n    return  1") == "def f():\n    return 1"


def test_remove_control_keeps_newlines_and_tabs() -> None:
    assert remove_control("a\x00b\x07c\td\ne\x7f\ufeff\x85") == "abc\td\ne"


def test_row_cleaner_rejects_rows_emptied_by_cleaning() -> None:
    cleaner = RowCleaner(CleanConfig())
    row = {"text": "\x00\x01", "label": "a"}
    try:
        cleaner(row, "classification")
    except RowError as e:
        assert e.reason == "field 'text' is empty after cleaning"
    else:
        raise AssertionError("expected RowError")
    off = RowCleaner(CleanConfig(normalize=False, control_chars=False, pii=False, secrets=False))
    row = {"text": " a  b \x00 me@x.org", "label": "a"}
    off(row, "classification")
    assert row["text"] == " a  b \x00 me@x.org"


def test_length_limits_use_the_main_text() -> None:
    row = {"instruction": "abc", "input": "", "output": "de"}
    assert length_problem(row, "instruction", 1, None) is None
    assert "below data.clean.min_chars=10" in length_problem(row, "instruction", 10, None).reason
    assert "above data.clean.max_chars=4" in length_problem(row, "instruction", 1, 4).reason


def test_exact_dedupe_keeps_first_and_drops_conflicting_labels() -> None:
    keys = ["a", "b", "a", "c", "c", "a"]
    labels = ["x", "y", "x", "p", "q", "x"]
    dups, conflicts = dd.exact_dedupe(keys, labels)
    assert [(d.index, d.of) for d in dups] == [(2, 0), (5, 0)]
    assert conflicts == [[3, 4]]
    dups, conflicts = dd.exact_dedupe(keys)
    assert [d.index for d in dups] == [2, 4, 5] and conflicts == []


def test_near_dedupe_catches_one_word_changes_not_unrelated_texts() -> None:
    base = _text(1, 120).split()
    changed = list(base)
    changed[60] = "CHANGED"
    texts = [
        " ".join(base),
        _text(2, 120),
        " ".join(changed),
        _text(3, 120),
        " ".join(base[:50]) + " entirely different ending " + _text(4, 70),
    ]
    dups = dd.near_dedupe(texts, threshold=0.85, shingle=5, num_perm=128, seed=0)
    assert [(d.index, d.of) for d in dups] == [(2, 0)]
    assert dups[0].similarity >= 0.85
    # Short texts with a small shingle: one word changed in 20 is still caught.
    short = [
        "the quick brown fox jumps over the lazy dog near the old river bank in the "
        "quiet village today",
        "completely different words about cooking pasta",
    ]
    short.append(short[0].replace("lazy", "sleepy"))
    dups = dd.near_dedupe(short, threshold=0.7, shingle=2, num_perm=128, seed=0)
    assert [(d.index, d.of) for d in dups] == [(2, 0)]


def test_minhash_estimates_jaccard_and_is_deterministic() -> None:
    h = dd.MinHasher(num_perm=256, shingle=1, seed=3)
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(50, 150))  # Jaccard 50/150
    sa, sb = h.signatures([a, b])
    assert abs(float((sa == sb).mean()) - 1 / 3) < 0.1
    assert np.array_equal(dd.MinHasher(256, 1, 3).signature(a), sa)
    assert not np.array_equal(dd.MinHasher(256, 1, 4).signature(a), sa)
    # Batching must not change results.
    assert np.array_equal(h.signatures([a, b], chunk=1), h.signatures([a, b]))


def test_lsh_params_catch_pairs_at_the_threshold_and_skip_dissimilar_ones() -> None:
    for t in (0.5, 0.7, 0.85, 0.95):
        b, r = dd.lsh_params(t, 64)
        assert b * r <= 64

        def p(s: float, b: int = b, r: int = r) -> float:
            return 1 - (1 - s**r) ** b

        assert p(t) >= 0.75 and p(t - 0.3) < 0.3


def test_leak_finder_exact_and_near() -> None:
    near = _text(10).split()
    near[5] = "different"
    train = [("k1", _text(10)), ("k2", _text(11)), ("k3", _text(12))]
    others = {"eval": [("k2", _text(11))], "test": [("zz", " ".join(near)), ("k9", _text(13))]}
    leaks = dd.LeakFinder(others, 0.8, 5, 64, 0).match(train)
    assert [(lk.index, lk.split, lk.other, lk.kind) for lk in leaks] == [
        (0, "test", 0, "near"),
        (1, "eval", 0, "exact"),
    ]
    # Batch by batch (prepare's train split on disk): rows numbered on from each batch's start.
    finder = dd.LeakFinder(others, 0.8, 5, 64, 0)
    batched = finder.match(train[:1], 0) + finder.match(train[1:], 1)
    assert [(lk.index, lk.kind) for lk in batched] == [(0, "near"), (1, "exact")]
    exact_only = dd.LeakFinder(others, 0.8, 5, 64, 0, near=False).match(train, 5000)
    assert [(lk.index, lk.kind) for lk in exact_only] == [(5001, "exact")]
    summary = dd.summarize_leaks(
        leaks,
        {"eval": ["e:1"], "test": ["t:1", "t:2"]},
        ["tr:1", "tr:2", "tr:3"],
        ["eval", "test"],
        removed=False,
    )
    assert summary["by_split"] == {"eval": {"exact": 1, "near": 0}, "test": {"exact": 0, "near": 1}}
    assert summary["examples"][0]["train"] == "tr:1" and summary["examples"][0]["other"] == "t:1"


def test_the_substring_shortcuts_change_no_result() -> None:
    """normalize_text and remove_control skip a regex where a substring test says it cannot
    match; on random strings of the characters that matter they equal the regexes run always."""
    import random
    import unicodedata

    from lmtune.data import clean

    def reference(text: str) -> str:
        text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
        text = clean._INNER_SPACE.sub(" ", text)
        text = clean._TRAILING_SPACE.sub("", text)
        return clean._MANY_NEWLINES.sub("\n\n", text).strip()

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\r", "\u00a0", "\u3000", "e\u0301", "\x07"]
    alphabet += ["\x85", "\ufeff", "."]
    for _ in range(3000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        assert normalize_text(text) == reference(text), repr(text)
        expected = clean._CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        assert remove_control(text) == expected, repr(text)
    assert normalize_text("a \t b") == "a b"
