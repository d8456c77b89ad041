"""SQuAD exact match / F1 with the official normalisation, against hand-computed values."""

from __future__ import annotations

import itertools

import pytest

from lmtune.evaluate.squad import (
    best_null_threshold,
    exact_score,
    f1_score,
    normalize_answer,
    score_one,
    squad_metrics,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("Theater of the Absurd", "theater of absurd"),  # 'the' only as a whole word
        ("  New\tYork\n", "new york"),
        ("U.S.-based", "usbased"),  # punctuation is deleted, not replaced by a space
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_and_f1_hand_values() -> None:
    assert exact_score("the Eiffel Tower", "Eiffel tower.") == 1
    assert exact_score("Eiffel", "Eiffel Tower") == 0
    # pred tokens {cat, sat}; gold {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3
    assert f1_score("the cat sat", "a cat sat on the mat") == pytest.approx(2 / 3)
    # tokens count with multiplicity: pred [big, big] vs gold [big] has P = 1/2, R = 1
    assert f1_score("big big", "big") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0 and f1_score("", "x") == 0.0


def test_max_over_gold_answers() -> None:
    assert score_one("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"]) == (1.0, 1.0)
    em, f1 = score_one("Denver", ["Denver Broncos", "Broncos of Denver"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)  # best: 'denver broncos' (P 1, R 1/2)


def test_empty_gold_means_no_answer() -> None:
    assert score_one("", []) == (1.0, 1.0)
    assert score_one("Paris", []) == (0.0, 0.0)
    # A gold answer that normalises to nothing counts as no answer (official v2 script).
    assert score_one("", ["the"]) == (1.0, 1.0)


def test_squad_metrics_v1_and_v2_split() -> None:
    v1 = squad_metrics(["Paris", "the cat sat"], [["Paris"], ["cat sat on mat"]])
    assert v1 == pytest.approx({"exact": 50.0, "f1": 100 * (1 + 2 / 3) / 2, "total": 2.0})
    assert "HasAns_exact" not in v1
    v2 = squad_metrics(["Paris", "", "Lyon", "Rome"], [["Paris"], [], [], ["Milan"]])
    assert v2["exact"] == pytest.approx(50.0) and v2["total"] == 4.0
    assert v2["HasAns_exact"] == pytest.approx(50.0) and v2["HasAns_total"] == 2.0
    assert v2["NoAns_exact"] == pytest.approx(50.0) and v2["NoAns_f1"] == pytest.approx(50.0)
    assert v2["NoAns_total"] == 2.0


def _f1_at(thr: float, margins: list[float], span_f1: list[float], has: list[bool]) -> float:
    total = 0.0
    for m, f, h in zip(margins, span_f1, has, strict=True):
        abstain = m > thr
        total += (0.0 if h else 1.0) if abstain else (f if h else 0.0)
    return 100 * total / len(margins)


def test_best_null_threshold_hand_case_and_brute_force() -> None:
    margins, span_f1, has = [2.0, -1.0, 0.5], [0.0, 1.0, 0.5], [False, True, True]
    thr, best = best_null_threshold(margins, span_f1, has)
    # Abstaining only on the unanswerable question (margin 2): (1 + 1 + 0.5) / 3.
    assert best == pytest.approx(100 * 2.5 / 3)
    assert 0.5 <= thr < 2.0 and _f1_at(thr, margins, span_f1, has) == pytest.approx(best)
    # Brute force over random cases with ties: the returned threshold achieves the maximum.
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 7)
        m = [float(rng.choice([-2, -1, 0, 1, 2, 3])) for _ in range(n)]
        f = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
        h = [rng.random() < 0.5 for _ in range(n)]
        thr, best = best_null_threshold(m, f, h)
        cands = [x + d for x, d in itertools.product(m, (-0.5, 0.5))]
        assert best == pytest.approx(max(_f1_at(t, m, f, h) for t in cands))
        assert _f1_at(thr, m, f, h) == pytest.approx(best)
