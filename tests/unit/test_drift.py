"""Drift statistics (PSI, KS, OOV) against hand-computed values and known cases; the data profile."""

from __future__ import annotations

import json
import math
import random

import pytest

from lmtune.ops.drift import (
    bin_counts,
    compare,
    kolmogorov_sf,
    ks_2samp,
    oov_rate,
    psi,
    psi_categorical,
    quantile_edges,
    value_counts,
    words,
)
from lmtune.ops.profile import batch_stats, data_profile, read_prediction_log, reference_oov_rate
from tiny import make_bert_tokenizer


def _hand_psi(e: list[float], a: list[float]) -> float:
    """PSI written out: 0.5 added to every count, then sum (a - e) ln(a / e) over proportions."""
    pe = [(c + 0.5) / (sum(e) + 0.5 * len(e)) for c in e]
    pa = [(c + 0.5) / (sum(a) + 0.5 * len(a)) for c in a]
    return sum((x - y) * math.log(x / y) for y, x in zip(pe, pa, strict=True))


def test_psi_hand_values() -> None:
    # 50/50 -> 90/10 with smoothing: proportions 50.5/101 and 90.5/101, 10.5/101.
    by_hand = (90.5 / 101 - 0.5) * math.log(90.5 / 50.5) + (10.5 / 101 - 0.5) * math.log(
        10.5 / 50.5
    )
    assert psi([50, 50], [90, 10]) == pytest.approx(by_hand, abs=1e-12)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.8531, abs=1e-4)
    # Large counts: smoothing vanishes and the textbook value 0.4 ln 1.8 + 0.4 ln 5 = 0.87889 remains.
    assert psi([50_000, 50_000], [90_000, 10_000]) == pytest.approx(0.8788898, abs=1e-4)
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([1000, 2000, 3000], [100, 200, 300]) == pytest.approx(
        0.0, abs=1e-3
    )  # proportions, not counts
    assert psi([30, 70], [60, 40]) == pytest.approx(psi([60, 40], [30, 70]))  # symmetric
    # An empty bin stays finite.
    assert psi([100, 0], [50, 50]) == pytest.approx(_hand_psi([100, 0], [50, 50]), rel=1e-12)
    assert psi([10, 0, 5, 7], [0, 9, 1, 3]) == pytest.approx(
        _hand_psi([10, 0, 5, 7], [0, 9, 1, 3]), rel=1e-12
    )
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_psi_categorical_aligns_categories() -> None:
    assert psi_categorical({"neg": 50, "pos": 50}, {"pos": 90, "neg": 10}) == pytest.approx(
        psi([50, 50], [10, 90])
    )
    # A category the reference never saw counts as an empty reference bin.
    assert psi_categorical({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(psi([10, 0], [5, 5]))


def test_quantile_edges_and_bins() -> None:
    uniform = {v: 10 for v in range(1, 11)}
    edges = quantile_edges(uniform, 10)
    assert edges == list(range(1, 10))
    assert bin_counts(uniform, edges) == [10] * 10
    # Ties merge bins: 90% of the mass on one value leaves two bins.
    assert quantile_edges({1: 90, 2: 10}, 10) == [1]
    assert bin_counts({0: 3, 1: 1, 2: 4, 7: 2}, [1]) == [4, 6]  # right-closed: 1 goes left


def test_kolmogorov_distribution_known_values() -> None:
    # Critical values of the Kolmogorov distribution (two-sided KS at alpha 0.10/0.05/0.01/0.001).
    for x, alpha in ((1.2238, 0.10), (1.3581, 0.05), (1.6276, 0.01), (1.9495, 0.001)):
        assert kolmogorov_sf(x) == pytest.approx(alpha, rel=2e-3)
    assert kolmogorov_sf(1.0) == pytest.approx(0.27000, abs=1e-4)
    assert kolmogorov_sf(0.5) == pytest.approx(0.96394, abs=1e-4)
    assert kolmogorov_sf(0.0) == 1.0
    grid = [kolmogorov_sf(x / 100) for x in range(5, 300)]  # crosses the series switch at 1.18
    assert all(a >= b for a, b in zip(grid, grid[1:], strict=False))


def test_ks_hand_values() -> None:
    disjoint = ks_2samp(value_counts([1, 2, 3]), value_counts([4, 5, 6]))
    assert disjoint["statistic"] == 1.0
    assert disjoint["pvalue"] == pytest.approx(kolmogorov_sf(math.sqrt(1.5)))
    overlap = ks_2samp(value_counts([1, 2, 3, 4]), value_counts([3, 4, 5, 6]))
    assert overlap["statistic"] == pytest.approx(0.5)  # at 2: 2/4 vs 0/4
    same = ks_2samp({1: 5, 2: 5}, {1: 50, 2: 50})
    assert same["statistic"] == 0.0 and same["pvalue"] == 1.0
    with pytest.raises(ValueError):
        ks_2samp({}, {1: 1})


def test_ks_pvalue_is_calibrated_under_the_null_and_detects_a_shift() -> None:
    rng = random.Random(0)
    p_null, p_shift = [], []
    for _ in range(300):
        a = value_counts(rng.gauss(0, 1) for _ in range(200))
        b = value_counts(rng.gauss(0, 1) for _ in range(200))
        c = value_counts(rng.gauss(0.5, 1) for _ in range(200))
        p_null.append(ks_2samp(a, b)["pvalue"])
        p_shift.append(ks_2samp(a, c)["pvalue"])
    false_alarms = sum(p < 0.05 for p in p_null) / len(p_null)
    assert 0.02 <= false_alarms <= 0.09, false_alarms  # about 5% when nothing changed
    assert sum(p < 0.01 for p in p_shift) / len(p_shift) > 0.95  # half a standard deviation: found


def test_words_and_oov_rate() -> None:
    assert words("It's GREAT, isn't it?") == ["it", "s", "great", "isn", "t", "it"]
    assert oov_rate(["a", "b", "c", "a"], {"a"}) == pytest.approx(0.5)
    assert oov_rate([], {"a"}) == 0.0


def test_reference_oov_rate_is_leave_one_row_out() -> None:
    # b and c occur in one row each: held-out text from this source would miss them.
    assert reference_oov_rate([["a", "b"], ["a", "c"]], {"a", "b", "c"}) == pytest.approx(0.5)
    # a repeats inside one row only, so it is unseen too; a word outside vocab always is.
    assert reference_oov_rate(
        [["a", "a"], ["b"], ["b", "c", "c"]], {"a", "b", "c"}
    ) == pytest.approx(4 / 6)
    assert reference_oov_rate([["a", "b"], ["a", "b"]], {"a"}) == pytest.approx(0.5)


def test_data_profile_and_batch_stats() -> None:
    tok = make_bert_tokenizer()
    rows = [
        {"text": "the movie was great", "label": "pos"},
        {"text": "the food was awful", "label": "neg"},
        {"text": "the movie was lovely \u2603", "label": "pos"},
    ]
    prof = data_profile(rows, tok, ["neg", "pos"], vocab_size=3)
    lengths = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert prof["rows"] == 3
    assert sum(prof["length"]["counts"].values()) == 3
    assert {int(k): v for k, v in prof["length"]["counts"].items()} == value_counts(lengths)
    assert prof["length"]["max"] == max(lengths)
    assert prof["labels"] == {"neg": 1, "pos": 2}
    assert prof["vocab"]["words"][:2] == ["the", "was"] and prof["vocab"]["size"] == 3
    assert prof["vocab"]["distinct_words"] == 7 and prof["vocab"]["total_words"] == 12
    # The snowman is not in the tiny WordPiece vocabulary: one [UNK] among all tokens.
    assert prof["unk_rate"] == pytest.approx(1 / sum(lengths))
    json.dumps(prof)  # must be JSON-serialisable as written to data_profile.json

    same = batch_stats(
        [r["text"] for r in rows],
        tok,
        set(prof["vocab"]["words"]),
        [r["label"] for r in rows],
        ["pos", "neg", "pos"],
    )
    drift = compare(prof, same)
    assert drift["length_psi"] == pytest.approx(0.0, abs=1e-12)
    assert drift["length_ks"]["statistic"] == 0.0 and drift["length_ks"]["pvalue"] == 1.0
    assert drift["label_psi"] == pytest.approx(0.0, abs=1e-12) and drift[
        "prediction_psi"
    ] == pytest.approx(0.0, abs=1e-12)

    shifted = batch_stats(
        ["completely unrelated words appear here at remarkable length " * 3] * 4,
        tok,
        set(prof["vocab"]["words"]),
        ["neg"] * 4,
        ["neg"] * 4,
    )
    drift = compare(prof, shifted)
    assert drift["length_psi"] > 1.0 and drift["length_ks"]["statistic"] == 1.0
    assert drift["oov_rate"] == 1.0 and drift["oov_increase"] > 0.5
    assert drift["label_psi"] > 0.2


def test_prediction_log_reading(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [
        {
            "time": "2025-01-01T00:00:00Z",
            "endpoint": "/v1/classify",
            "model_version": "v1",
            "input": "the movie was great",
            "output": "pos",
            "label": "pos",
            "scores": {"pos": 0.9, "neg": 0.1},
        },
        {
            "endpoint": "/v1/classify",
            "model_version": "v1",
            "input": {"text": "a", "text_pair": "b"},
            "output": "neg",
            "label": "neg",
        },
        {"endpoint": "/v1/classify", "model_version": "v0", "input": "older model", "label": "neg"},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    texts, preds, counts = read_prediction_log(log, ["neg", "pos"], "v1")
    assert texts == ["the movie was great", "a b"] and preds == ["pos", "neg"]
    assert counts == {"lines": 3, "skipped_bad": 0, "skipped_other_versions": 1}
    log.write_text("{not json\n" + json.dumps(lines[0]) + "\n")
    from lmtune.errors import UserError

    with pytest.raises(UserError, match="line 1: not valid JSON"):
        read_prediction_log(log, ["neg", "pos"], "v1")


def test_export_merged_keeps_the_data_profile(tmp_path) -> None:
    """A merged LoRA export is what a registry serves and monitors: it must carry the profile."""
    from lmtune.config import AdapterConfig, ModelConfig
    from lmtune.models.adapters import apply_adapter
    from lmtune.models.export import export_merged, save_model
    from lmtune.models.load import load_model, load_tokenizer
    from lmtune.ops.profile import PROFILE_FILE, read_profile, write_profile
    from tiny import make_encoder_classifier, save_tiny

    tok = make_bert_tokenizer()
    base = save_tiny(make_encoder_classifier(tokenizer=tok), tok, tmp_path / "base")
    mcfg = ModelConfig(name_or_path=str(base))
    tok = load_tokenizer(mcfg)
    model = apply_adapter(
        load_model(mcfg, "classification", tok, labels=["neg", "pos"]),
        AdapterConfig(type="lora", r=4),
        "classification",
    )
    save_model(model, tok, tmp_path / "model")
    write_profile(
        tmp_path / "model", [{"text": "the movie was great", "label": "pos"}], tok, ["neg", "pos"]
    )
    export_merged(tmp_path / "model", tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()  # really the merge path
    assert (tmp_path / "merged" / PROFILE_FILE).read_bytes() == (
        tmp_path / "model" / PROFILE_FILE
    ).read_bytes()
    assert read_profile(tmp_path / "merged")["labels"] == {"neg": 0, "pos": 1}
