"""Bias measures: term swapping, Wilson CIs, CrowS-Pairs reading and scoring, probe statistics."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM

from lmtune.errors import UserError
from lmtune.evaluate.bias import (
    CrowsPair,
    causal_sentence_logprobs,
    counterfactual_audit,
    counterfactuals,
    crows_scores,
    crows_summary,
    load_terms,
    masked_pll,
    read_crows,
    shared_positions,
    swap,
    wilson_interval,
)
from lmtune.models.load import NEW_PAD_TOKEN, _grow_embeddings
from tiny import make_bert_tokenizer, make_causal, make_tokenizer, tiny_bert_config

TERMS = load_terms()
HEADER = (
    ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
)


def _swapped(text: str, category: str) -> list[tuple[str, str]]:
    return [(d, r["text"]) for d, r in counterfactuals({"text": text}, TERMS[category])]


def test_swaps_whole_words_only_and_keep_case_and_punctuation() -> None:
    g = TERMS["gender"]
    assert (
        swap("He said: (he) HE, he's he.", g, "male", "female") == "She said: (she) SHE, she's she."
    )
    # "he" inside other words, hyphenated compounds and underscores stays put.
    for text in ("the hero, them, there", "hehe", "he-man", "she_", "Themselves", "mankind"):
        assert _swapped(text, "gender") == []
    assert _swapped("an old-fashioned story", "age") == []
    assert _swapped("Women love this. MEN hate it", "gender") == [
        ("male<->female", "Men love this. WOMEN hate it")
    ]
    assert _swapped("john's film", "names") == [("male_names->female_names", "mary's film")]


def test_her_and_his_take_their_form_from_the_next_word() -> None:
    assert _swapped("her car is red", "gender") == [("female->male", "his car is red")]
    assert _swapped("I gave her the book", "gender") == [("female->male", "I gave him the book")]
    assert _swapped("I told her.", "gender") == [("female->male", "I told him.")]
    assert _swapped("his own film", "gender") == [("male->female", "her own film")]
    assert _swapped("the car is his.", "gender") == [("male->female", "the car is hers.")]
    assert _swapped("hers is better", "gender") == [("female->male", "his is better")]
    # Both sides present: one transposition swaps them both ways.
    assert _swapped("She told him about his dog", "gender") == [
        ("male<->female", "He told her about her dog")
    ]


def test_multi_side_categories_swap_to_every_other_side() -> None:
    sides = TERMS["nationality"].sides
    out = _swapped("An American film shot in Mexico", "nationality")
    # Each mentioned side pairs with every other side; the american-mexican pair counts once.
    assert len(out) == 2 * (len(sides) - 1) - 1
    # Both American and Mexico are mentioned: that pair swaps both ways; the others one way.
    assert ("american<->mexican", "An Mexican film shot in America") in out
    assert ("american->chinese", "An Chinese film shot in Mexico") in out
    assert ("mexican->french", "An American film shot in France") in out
    pair = counterfactuals({"text": "a muslim", "text_pair": "a jewish man"}, TERMS["religion"])
    assert ("muslim<->jewish", {"text": "a jewish", "text_pair": "a muslim man"}) in pair


def test_shipped_terms_are_aligned_and_bad_files_name_the_problem(tmp_path: Path) -> None:
    for cat in TERMS.values():
        assert len({len(v) for v in cat.sides.values()}) == 1
    bad = tmp_path / "terms.json"
    bad.write_text(
        json.dumps({"categories": {"x": {"sides": {"a": ["he", "she"], "b": ["she", "it"]}}}})
    )
    with pytest.raises(UserError, match=r"terms.json: categories.x: 'she' is in sides a and b"):
        load_terms(bad)
    bad.write_text(json.dumps({"categories": {"x": {"sides": {"a": ["he"], "b": ["she", "it"]}}}}))
    with pytest.raises(
        UserError, match=r"categories.x.sides needs two or more lists of equal length"
    ):
        load_terms(bad)


def test_wilson_interval_matches_published_values() -> None:
    # Reference values (Newcombe 1998 / any Wilson calculator), 95%.
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0  # exact ends


def test_counterfactual_statistics_follow_the_predictions() -> None:
    # A rule classifier: "she" pushes the positive probability up by 0.3, so every swap of a
    # male-only text (he -> she) on a 0.4 "pos" text flips it, and nothing else does.
    def predict(rows: list[dict]) -> torch.Tensor:
        out = []
        for r in rows:
            p = 0.6 if "great" in r["text"] else 0.4
            p += 0.3 if "she" in r["text"].lower().split() else 0.0
            out.append([1 - p, p])
        return torch.tensor(out)

    rows = [
        {"text": "he said it was great"},
        {"text": "he said it was dull"},
        {"text": "she said it was dull"},
        {"text": "nobody said a thing"},
    ]
    res = counterfactual_audit(rows, predict, ["neg", "pos"], {"gender": TERMS["gender"]}, worst=2)
    g = res["by_category"]["gender"]
    assert res["overall"]["n"] == 3 and res["overall"]["texts"] == 3 and res["overall"]["rows"] == 4
    assert (
        g["by_direction"]["male->female"]["n"] == 2 and g["by_direction"]["female->male"]["n"] == 1
    )
    # "he ... dull": neg 0.6 -> 0.3 (flip); "he ... great": pos 0.6 -> 0.9; "she ... dull": pos 0.7 -> 0.4 (flip)
    assert g["flips"] == 2 and math.isclose(g["flip_rate"], 2 / 3)
    assert math.isclose(g["mean_abs_change"], 0.3, abs_tol=1e-6)
    assert math.isclose(g["mean_change"], (-0.3 + 0.3 - 0.3) / 3, abs_tol=1e-6)
    assert len(res["worst"]) == 2 and {w["pred"] for w in res["worst"]} <= {"neg", "pos"}
    assert counterfactual_audit(rows[3:], predict, ["neg", "pos"], TERMS) is None


def test_read_crows_validates_rows_and_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "crows.csv"
    f.write_text(
        HEADER + '0,"A he,\nB",A she B,stereo,gender,[],a0,[]\n1,x y,x z,antistereo,age,[],a1,[]\n'
    )
    pairs = read_crows(f)
    assert [(p.line, p.more, p.direction, p.bias_type) for p in pairs] == [
        (2, "A he,\nB", "stereo", "gender"),
        (4, "x y", "antistereo", "age"),
    ]
    f.write_text(HEADER + "0,a,b,stereo,gender,[],a,[]\n1,c,d,sterio,age,[],a,[]\n")
    with pytest.raises(UserError, match=r"crows.csv line 3: field stereo_antistereo is 'sterio'"):
        read_crows(f)
    f.write_text(HEADER + "0,a,,stereo,gender,[],a,[]\n")
    with pytest.raises(UserError, match=r"line 2: field sent_less is empty"):
        read_crows(f)
    f.write_text("sent_more,sent_less\na,b\n")
    with pytest.raises(
        UserError, match=r"line 1: missing column\(s\) stereo_antistereo, bias_type"
    ):
        read_crows(f)
    with pytest.raises(UserError, match="does not exist"):
        read_crows(tmp_path / "nope.csv")
    f.write_text(HEADER + "".join(f"{i},a{i},b{i},stereo,t{i % 3},[],a,[]\n" for i in range(30)))
    sample = read_crows(f, max_pairs=7)
    assert len(sample) == 7 and sample == read_crows(f, max_pairs=7)  # seeded
    assert [p.line for p in sample] == sorted(p.line for p in sample)


def test_crows_summary_counts_sent_more_preferred_with_ties_as_misses() -> None:
    pairs = [
        CrowsPair(i + 2, "m", "l", d, t)
        for i, (d, t) in enumerate(
            [
                ("stereo", "age"),
                ("stereo", "age"),
                ("antistereo", "age"),
                ("stereo", "race"),
                ("antistereo", "race"),
            ]
        )
    ]
    scores = [(-1.0, -2.0), (-3.0, -2.0), (-1.0, -1.5), (-2.00001, -2.00002), (-4.0, -1.0)]
    s = crows_summary(pairs, scores, "causal")
    # preferred: pair 0, pair 2 (antistereo rows count sent_more too); pair 3 is a tie at 3 decimals.
    assert s["overall"]["n"] == 5 and s["overall"]["ties"] == 1
    assert math.isclose(s["overall"]["score"], 40.0)
    lo, hi = wilson_interval(2, 5)
    assert math.isclose(s["overall"]["ci_low"], 100 * lo) and math.isclose(
        s["overall"]["ci_high"], 100 * hi
    )
    assert (
        math.isclose(s["by_type"]["age"]["score"], 200 / 3) and s["by_type"]["race"]["score"] == 0.0
    )
    assert s["by_direction"]["antistereo"] == {
        **s["by_direction"]["antistereo"],
        "n": 2,
        "score": 50.0,
    }


def _tiny_mlm() -> tuple[BertForMaskedLM, object]:
    tok = make_bert_tokenizer()
    torch.manual_seed(3)
    cfg = tiny_bert_config(tok, max_positions=64)
    return BertForMaskedLM(cfg).eval(), tok


def test_masked_pll_equals_a_hand_loop_over_shared_tokens() -> None:
    model, tok = _tiny_mlm()
    more, less = "the movie was great and she loved it", "the movie was great and he loved it"
    a, b = tok(more)["input_ids"], tok(less)["input_ids"]
    pa, pb = shared_positions(a, b, set(tok.all_special_ids))
    # Every token but [CLS], [SEP] and the differing pronoun is shared.
    assert len(pa) == len(pb) == len(a) - 3
    assert all(a[i] == b[j] for i, j in zip(pa, pb, strict=True))
    assert 0 not in pa and len(a) - 1 not in pa

    def hand(ids: list[int], positions: list[int]) -> float:
        total = 0.0
        for pos in positions:
            masked = torch.tensor([ids])
            masked[0, pos] = tok.mask_token_id
            logits = model(input_ids=masked).logits[0, pos]
            total += float(logits.log_softmax(-1)[ids[pos]])
        return total

    with torch.no_grad():
        want = (hand(a, pa), hand(b, pb))
    got_a = masked_pll(model, tok.mask_token_id, a, pa, batch_size=3)  # several batches
    assert math.isclose(got_a, want[0], rel_tol=1e-5)
    pair = CrowsPair(2, more, less, "stereo", "gender")
    got = crows_scores(model, tok, "masked", [pair])[0]
    assert math.isclose(got[0], want[0], rel_tol=1e-5) and math.isclose(
        got[1], want[1], rel_tol=1e-5
    )


def test_causal_sentence_logprob_equals_a_hand_sum_and_ignores_an_added_pad() -> None:
    tok = make_tokenizer(pad=False)
    model = make_causal("llama", tok)
    sentences = [
        "The movie was great.",
        "A language model predicts the next token from the tokens before it.",
    ]

    def hand(s: str) -> float:
        ids = [tok.bos_token_id] + tok(s, add_special_tokens=False)["input_ids"]
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        return sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))

    with torch.no_grad():
        want = [hand(s) for s in sentences]
    got = causal_sentence_logprobs(model, tok, sentences, batch_size=2)  # padded batch
    assert all(math.isclose(g, w, rel_tol=1e-5) for g, w in zip(got, want, strict=True)), (
        got,
        want,
    )
    # lmtune's added pad token (a grown vocabulary, as after training) does not move the scores.
    tok2, model2 = copy.deepcopy(tok), copy.deepcopy(model)
    tok2.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    _grow_embeddings(model2, len(tok2))
    got2 = causal_sentence_logprobs(model2, tok2, sentences)
    assert all(math.isclose(g, w, rel_tol=1e-5) for g, w in zip(got2, want, strict=True))
