"""Preference data: the three input shapes, validation and ties, tokenization and truncation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lmtune.config import Config, load_config
from lmtune.data.pipeline import prepare_data, read_rows
from lmtune.errors import UserError
from lmtune.tasks.pairs import PairEncoder, fit_pair, joiner
from tiny import make_bert_tokenizer, make_tokenizer

HH = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_rlhf_harmless_base" / "test.jsonl"
)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _cfg(data: dict, task: str = "dpo") -> Config:
    clean = {"pii": False, "secrets": False}
    return Config.model_validate(
        {"task": task, "data": {"clean": clean, "split": {"eval": 0.0}, **data}}
    )


def _rejects(run: Path) -> dict[int, str]:
    lines = (run / "rejects.jsonl").read_text().splitlines()
    return {r["line"]: r["reason"] for r in map(json.loads, lines)}


def _pairs(n: int) -> list[dict]:
    return [
        {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
        for i in range(n)
    ]


def test_prompt_chosen_rejected_and_validation(tmp_path: Path) -> None:
    rows = _pairs(20) + [
        {"prompt": "q", "chosen": "same", "rejected": "same"},  # 21
        {"prompt": "q", "chosen": "  ", "rejected": "x"},  # 22
        {"prompt": "", "chosen": "a", "rejected": "b"},  # 23
        {"prompt": "q", "chosen": 3, "rejected": "b"},  # 24
        {"prompt": "q", "chosen": "a  b", "rejected": "a b"},  # 25: equal after cleaning
    ]
    cfg = _cfg({"train": _jsonl(tmp_path / "p.jsonl", rows), "max_bad_fraction": 0.5})
    out = prepare_data(cfg, tmp_path / "run")
    assert out.format == "preference"
    assert out.splits["train"][0] == {
        "prompt": "question 0?",
        "chosen": "good answer 0",
        "rejected": "bad answer 0",
        "_source": "p.jsonl:1",
    }
    got = _rejects(tmp_path / "run")
    assert got[21] == "'chosen' and 'rejected' are the same response"
    assert got[22] == "field 'chosen' is empty (no response)"
    assert got[23] == "field 'prompt' is empty"
    assert got[24].startswith(
        "field 'chosen' must be a string or a list of {role, content} messages"
    )
    assert got[25] == "'chosen' and 'rejected' are the same response after cleaning"
    assert len(out.splits["train"]) == 20


def test_conversational_pairs_move_shared_turns_into_the_prompt(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    rows = [
        {
            "prompt": [user],
            "chosen": [
                {"role": "assistant", "content": "hello"},
                user,
                {"role": "assistant", "content": f"good {i}"},
            ],
            "rejected": [
                {"role": "assistant", "content": "hello"},
                user,
                {"role": "assistant", "content": f"bad {i}"},
            ],
        }
        for i in range(4)
    ]
    rows.append(
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "b"}],
        }
    )
    cfg = _cfg({"train": _jsonl(tmp_path / "c.jsonl", rows), "max_bad_fraction": 0.5})
    out = prepare_data(cfg, tmp_path / "run")
    row = out.splits["train"][0]
    assert [m["content"] for m in row["prompt"]] == ["hi", "hello", "hi"]
    assert (row["chosen"], row["rejected"]) == ("good 0", "bad 0")
    assert "must be the assistant's response" in _rejects(tmp_path / "run")[5]


def test_pairwise_with_ties_counted_and_dropped(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": f"p{i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "preference": ["a", "B", "tie", "model_b"][i % 4],
        }
        for i in range(12)
    ]
    rows.append({"prompt": "p", "response_a": "a", "response_b": "b", "preference": "maybe"})
    cfg = _cfg({"train": _jsonl(tmp_path / "pw.jsonl", rows)})
    out = prepare_data(cfg, tmp_path / "run")  # 3 ties of 13 rows: not "bad" rows
    assert out.format == "pairwise"
    by_prompt = {r["prompt"]: (r["chosen"], r["rejected"]) for r in out.splits["train"]}
    assert by_prompt["p0"] == ("a0", "b0") and by_prompt["p1"] == ("b1", "a1")
    assert "p2" not in by_prompt and len(by_prompt) == 9
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["drops"]["by_stage"] == {"validate": 1, "ties": 3}
    assert _rejects(tmp_path / "run")[13] == (
        "field 'preference' must be a, b, tie or skip, got 'maybe'"
    )


def test_ties_kept_for_reward_models_only(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": f"p{i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "preference": ["a", "tie"][i % 2],
        }
        for i in range(8)
    ]
    path = _jsonl(tmp_path / "pw.jsonl", rows)
    cfg = Config.model_validate(
        {**_cfg({"train": path}, task="reward").model_dump(), "preference": {"ties": "keep"}}
    )
    out = prepare_data(cfg, tmp_path / "run")
    ties = sorted(r["prompt"] for r in out.splits["train"] if r.get("tie"))
    assert ties == ["p1", "p3", "p5", "p7"] and len(out.splits["train"]) == 8
    with pytest.raises(ValueError, match="preference.ties: keep is for task reward"):
        Config.model_validate(
            {**_cfg({"train": path}).model_dump(), "preference": {"ties": "keep"}}
        )


def test_pairwise_skips_are_dropped_with_their_reason(tmp_path: Path) -> None:
    # `lmtune feedback` records skipped pairs too (their responses may even be identical).
    rows = [
        {
            "prompt": f"p{i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "preference": ["a", "skip", "b"][i % 3],
        }
        for i in range(9)
    ]
    rows.append({"prompt": "same", "response_a": "x", "response_b": "x", "preference": "skip"})
    cfg = _cfg({"train": _jsonl(tmp_path / "fb.jsonl", rows), "format": "pairwise"})
    out = prepare_data(cfg, tmp_path / "run")
    assert sorted(r["prompt"] for r in out.splits["train"]) == ["p0", "p2", "p3", "p5", "p6", "p8"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["drops"]["by_stage"] == {"ties": 4}
    reasons = _rejects(tmp_path / "run")
    assert reasons[2].startswith("preference is skip") and reasons[10].startswith(
        "preference is skip"
    )


def test_hh_dialogues_split_at_the_last_assistant_turn(tmp_path: Path) -> None:
    shared = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me"
    rows = [
        {
            "chosen": f"{shared} {i}\n\nAssistant: Sure {i}",
            "rejected": f"{shared} {i}\n\nAssistant: No {i}",
        }
        for i in range(10)
    ]
    rows.append(
        {"chosen": f"{shared}\n\nAssistant: x", "rejected": f"{shared} more\n\nAssistant: y"}
    )
    rows.append({"chosen": "no turns here", "rejected": "nor here"})
    cfg = _cfg({"train": _jsonl(tmp_path / "hh.jsonl", rows), "max_bad_fraction": 0.5})
    out = prepare_data(cfg, tmp_path / "run")
    assert out.format == "dialogue_pair"
    row = out.splits["train"][0]
    assert row["prompt"] == "Human: hi\n\nAssistant: hello\n\nHuman: tell me 0\n\nAssistant:"
    assert (row["chosen"], row["rejected"]) == ("Sure 0", "No 0")
    got = _rejects(tmp_path / "run")
    assert "differ before their last '\\n\\nAssistant:' turn" in got[11]
    assert "has no '\\n\\nAssistant:' turn" in got[12]


@pytest.mark.slow
@pytest.mark.skipif(not HH.is_file(), reason="../shared/data/hh_rlhf_harmless_base is absent")
def test_real_hh_rlhf_harmless_file(tmp_path: Path) -> None:
    cfg = _cfg({"train": str(HH)}, task="reward")
    out = prepare_data(cfg, tmp_path / "run")
    drops = json.loads((tmp_path / "run" / "data_report.json").read_text())["drops"]
    # 5 rows whose dialogues differ before the last turn, 4 with an empty final response.
    assert drops["by_reason"]["validate"] == {
        "chosen and rejected differ before the last turn": 5,
        "field 'chosen' is empty": 4,
    }
    assert len(out.splits["train"]) == 2312 - 9
    assert all(
        r["prompt"].endswith("\n\nAssistant:") and r["prompt"].startswith("Human:")
        for r in out.splits["train"]
    )


def test_detection_errors_and_config_combinations(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "x.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    with pytest.raises(UserError, match=r"task dpo needs preference pairs.*data.columns"):
        prepare_data(_cfg({"train": path}), tmp_path / "run")
    mapped = _cfg(
        {"train": path, "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}
    )
    assert prepare_data(mapped, tmp_path / "run2").splits["train"][0]["chosen"] == "a"
    with pytest.raises(UserError, match="task orpo needs preference pairs"):
        load_config(None, ["task=orpo", "data.format=chat"])
    with pytest.raises(UserError, match="use task reward, dpo, orpo"):
        load_config(None, ["task=sft", "data.format=preference"])
    with pytest.raises(UserError, match="preference section only applies"):
        load_config(None, ["task=sft", "preference.beta=0.5"])
    with pytest.raises(UserError, match="label_smoothing does not apply"):
        load_config(None, ["task=dpo", "preference.loss=ipo", "preference.label_smoothing=0.1"])


def test_eval_files_drop_ties_and_keep_margins(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "response_a": "a", "response_b": "b", "preference": "tie"},
        {"prompt": "p", "response_a": "a", "response_b": "b", "preference": "b", "margin": 2},
    ]
    kept, rejects = read_rows(_jsonl(tmp_path / "e.jsonl", rows), _cfg({}, task="reward"))
    assert kept == [
        {"prompt": "p", "chosen": "b", "rejected": "a", "margin": 2.0, "_source": "e.jsonl:2"}
    ]
    assert rejects[0]["stage"] == "ties"


# ---- tokenization ------------------------------------------------------------------------


def test_fit_pair_keeps_prompt_end_and_response_start() -> None:
    p, c, r = fit_pair(
        [1, 10, 11, 12, 13], [20, 21, 22], [30, 31], 6, max_prompt_length=3, keep_first=1
    )
    assert p == [1, 12, 13] and c == [20, 21, 22] and r == [30, 31]
    p, c, r = fit_pair([1, 10, 11], [20, 21, 22, 23], [30], 5)
    assert (p, c, r) == ([1, 10, 11], [20, 21], [30])
    with pytest.raises(ValueError, match="no room for a response within model.max_length=3"):
        fit_pair([1, 10, 11], [20], [30], 3)
    with pytest.raises(ValueError, match="identical within their first 1 tokens"):
        fit_pair([1, 10, 11], [20, 21], [20, 22], 4)


def test_text_pairs_tokenize_like_the_joined_text() -> None:
    tok = make_tokenizer(pad=True)
    enc = PairEncoder(tok, 64)
    f = enc.encode(
        {"prompt": "Human: hello\n\nAssistant:", "chosen": "Sure thing", "rejected": "No"}
    )
    assert joiner("Assistant:", "Sure") == " " and joiner("Q:\n", "A") == ""
    assert f["chosen_ids"][-1] == tok.eos_token_id  # this tokenizer adds no BOS (like SFT)
    text = tok.decode(f["prompt_ids"] + f["chosen_ids"])
    assert text == "Human: hello\n\nAssistant: Sure thing</s>"
    assert f["length"] == len(f["prompt_ids"]) + len(f["chosen_ids"])
    short = PairEncoder(tok, 12, max_prompt_length=5).encode(
        {
            "prompt": "one two three four five six seven",
            "chosen": "a b c d e f g h",
            "rejected": "z",
        }
    )
    assert len(short["prompt_ids"]) == 5
    assert tok.decode(short["prompt_ids"][1:]).endswith("seven")
    assert len(short["prompt_ids"]) + len(short["chosen_ids"]) == 12


def test_chat_prompts_use_the_sft_template() -> None:
    from lmtune.data.templates import encode_prompt, encode_sft_row

    tmpl = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok = copy.deepcopy(make_tokenizer(pad=True, chat_template=tmpl))
    prompt = [{"role": "user", "content": "hello"}]
    f = PairEncoder(tok, 64).encode({"prompt": prompt, "chosen": "yes", "rejected": "no"})
    assert f["prompt_ids"] == encode_prompt(prompt, "chat", tok)
    sft = encode_sft_row(
        {"messages": [*prompt, {"role": "assistant", "content": "yes"}]}, "chat", tok, 64
    )
    assert f["prompt_ids"] + f["chosen_ids"] == sft["input_ids"]


def test_reward_text_pair_encoding_truncates_by_policy() -> None:
    from lmtune.tasks.reward import RewardTask

    tok = copy.deepcopy(make_bert_tokenizer())
    # Like MiniLM's tokenizer.json: the backend pads and truncates every encode() by itself.
    tok.backend_tokenizer.enable_padding(length=40, pad_id=tok.pad_token_id, pad_token="[PAD]")
    tok.backend_tokenizer.enable_truncation(max_length=40)
    cfg = load_config(
        None, ["task=reward", "model.max_length=12", "preference.max_prompt_length=4"]
    )
    task = RewardTask(tok, cfg)
    assert task.text_pair
    f = task.encode(
        {
            "prompt": "the quick brown fox jumps over the lazy dog",
            "chosen": "the movie was great and lovely",
            "rejected": "awful",
        }
    )
    ids = f["chosen_input_ids"]
    assert len(ids) == 12 and ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2
    assert tok.pad_token_id not in ids + f["rejected_input_ids"]
    words = tok.decode(ids, skip_special_tokens=True).split()
    assert words[:2] != ["the", "quick"] and "dog" in words  # prompt keeps its end
    assert tok.decode(f["rejected_input_ids"], skip_special_tokens=True).endswith("awful")
