"""QA features and decoding: offsets -> token spans across windows, best span from logits."""

from __future__ import annotations

import numpy as np
import pytest

from lmtune.config import Config
from lmtune.tasks.qa import QATask, best_span, decode, span_positions
from tiny import make_bert_tokenizer

# [CLS] q q [SEP] c c c c [SEP]: context tokens cover characters 0-3, 4-9, 10-12, 13-20.
OFFSETS = [None, None, None, None, (0, 3), (4, 9), (10, 12), (13, 20), None]


def test_span_positions_inside_outside_and_partial() -> None:
    assert span_positions(OFFSETS, 4, 12) == (5, 6)
    assert span_positions(OFFSETS, 5, 11) == (5, 6)  # mid-token characters map to their tokens
    assert span_positions(OFFSETS, 13, 20) == (7, 7)
    assert span_positions(OFFSETS, 25, 30) == (0, 0)  # answer after this window: [CLS]
    assert span_positions(OFFSETS, 10, 25) == (0, 0)  # only partly inside: [CLS]
    assert span_positions([None, None], 0, 3) == (0, 0)


def _task(max_length: int = 40, stride: int = 8, **qa) -> QATask:
    cfg = Config.model_validate(
        {"task": "qa", "model": {"max_length": max_length}, "qa": {"doc_stride": stride, **qa}}
    )
    return QATask(make_bert_tokenizer(), cfg)


def test_long_context_windows_overlap_and_only_answer_windows_point_at_it() -> None:
    task = _task()
    filler = " ".join(["the quick brown fox jumps over the lazy dog ."] * 8)
    context = f"{filler} the capital of france is paris . {filler}"
    start = context.index("paris")
    feats = task.encode(
        {
            "question": "what is the capital?",
            "context": context,
            "answers": {"text": ["paris"], "answer_start": [start]},
        }
    )
    assert len(feats) > 4 and all(f["length"] <= 40 for f in feats)
    hits = [f for f in feats if (f["start"], f["end"]) != (0, 0)]
    assert 1 <= len(hits) < len(feats)
    assert (feats[0]["start"], feats[0]["end"]) == (0, 0)  # the first window ends before 'paris'
    for f in hits:
        a, b = f["offsets"][f["start"]][0], f["offsets"][f["end"]][1]
        assert context[a:b] == "paris"
    # Consecutive windows share exactly doc_stride context tokens.
    ctx0 = [o for o in feats[0]["offsets"] if o is not None]
    ctx1 = [o for o in feats[1]["offsets"] if o is not None]
    assert ctx0[-8:] == ctx1[:8]
    # Every context character is covered by some window.
    covered = {c for f in feats for o in f["offsets"] if o for c in range(*o)}
    assert all(i in covered for i, ch in enumerate(context) if not ch.isspace())


def test_unanswerable_rows_target_cls_and_prediction_rows_have_no_target() -> None:
    task = _task()
    feats = task.encode(
        {
            "question": "who?",
            "context": "the lazy dog .",
            "answers": {"text": [], "answer_start": []},
        }
    )
    assert [(f["start"], f["end"]) for f in feats] == [(0, 0)]
    feats = task.encode({"question": "who?", "context": "the lazy dog ."})
    assert "start" not in feats[0]


def test_question_too_long_for_a_window_is_a_row_error() -> None:
    task = _task(max_length=40, stride=8)
    with pytest.raises(ValueError, match="qa.doc_stride=8"):
        task.encode({"question": " ".join(["dog"] * 30), "context": "the lazy dog ."})


def test_best_span_obeys_context_order_and_length() -> None:
    start = np.array([9.0, 8.0, 0, 0, 1.0, 0.5, 0.0, 5.0, 0])
    end = np.array([9.0, 0, 0, 0, 4.0, 0.2, 3.0, 0.1, 0])
    # Best pair overall would be (0, 0) or question tokens: excluded. (7, 7)=5.1; (4, 4)=5.0;
    # (7, 6) has end < start: excluded.
    assert best_span(start, end, OFFSETS, n_best=4, max_answer_length=5) == pytest.approx(
        (5.1, 13, 20)
    )
    # A max answer length of 1 token still allows single-token spans only.
    start2 = np.array([0, 0, 0, 0, 6.0, 0, 0, 0, 0])
    end2 = np.array([0, 0, 0, 0, 0, 0, 0, 6.0, 0])
    assert best_span(start2, end2, OFFSETS, n_best=4, max_answer_length=4) == pytest.approx(
        (12.0, 0, 20)
    )
    assert best_span(start2, end2, OFFSETS, n_best=4, max_answer_length=3)[0] < 12.0
    assert best_span(start, end, [None] * 9, 4, 5) is None


def test_decode_picks_best_window_and_min_null_score() -> None:
    context = "abc defgh ij klmnopq rstu"
    w1 = (
        np.array([1.0, 0, 0, 0, 2.0, 0, 0, 0, 0]),
        np.array([1.0, 0, 0, 0, 2.0, 0, 0, 0, 0]),
        OFFSETS,
    )
    offsets2 = [None, None, None, None, (10, 12), (13, 20), (21, 25), None]
    w2 = (np.array([3.0, 0, 0, 0, 0, 5.0, 0, 0]), np.array([-1.0, 0, 0, 0, 0, 0, 4.0, 0]), offsets2)
    d = decode([w1, w2], context, n_best=3, max_answer_length=10)
    assert d["text"] == "klmnopq rstu" and d["start"] == 13
    assert d["score"] == pytest.approx(9.0) and d["null_score"] == pytest.approx(2.0)  # min(2, 2)
    task = _task(null_threshold=0.0)
    assert task._final(d, allow_no_answer=True) == "klmnopq rstu"
    d_null = {**d, "null_score": 9.5}
    assert task._final(d_null, allow_no_answer=True) == ""
    assert task._final(d_null, allow_no_answer=False) == "klmnopq rstu"
    assert _task(null_threshold=1.0)._final(d_null, allow_no_answer=True) == "klmnopq rstu"
