"""One prompt encoding for training and generation: for every causal task and data format,
the prompt ids `lmtune generate` (and serve, and the reports) feed a model equal the prompt
ids the model was trained on; no EOS after a prompt, the chat template where training
used it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from lmtune.config import Config
from lmtune.data.collate import IGNORE
from lmtune.data.templates import generation_prompt_ids
from lmtune.models.export import save_model
from lmtune.tasks import build_task
from lmtune.tasks.rollout import encode_prompt_ids
from tiny import make_bert_tokenizer, make_causal, make_tokenizer

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ASK = "Where is the library of the city?"
ANSWER = "Next to the park, on the main street."


def _tokenizers() -> dict[str, Any]:
    chat = copy.deepcopy(make_tokenizer(chat_template=TEMPLATE))
    bert = copy.deepcopy(make_bert_tokenizer())  # appends [SEP] when asked for special tokens
    for tok in (chat, bert):
        tok.pad_token = tok.pad_token or tok.unk_token
    return {"bpe-chat-template": chat, "bpe-no-template": make_tokenizer(), "bert-vocab": bert}


def _task(name: str, tok: Any, fmt: str) -> Any:
    cfg = Config.model_validate({"task": name, "model": {"max_length": 256}})
    return build_task(name, tok, cfg, None, None, fmt)


def _trained_prompt(task: str, tok: Any, fmt: str, row: dict) -> list[int]:
    """The prompt ids a training feature of `row` holds (sft: the ids before the labels)."""
    feat = _task(task, tok, fmt).encode(copy.deepcopy(row))
    feat = feat[0] if isinstance(feat, list) else feat  # kto: one feature per unpaired row
    if task != "sft":
        return feat["prompt_ids"]
    first = next(i for i, lab in enumerate(feat["labels"]) if lab != IGNORE)
    return feat["input_ids"][:first]


CASES = [
    # (task, format, training row, what a user passes to generate, chat_prompts)
    ("sft", "instruction", {"instruction": ASK, "input": "", "output": ANSWER}, ASK, False),
    (
        "sft",
        "chat",
        {
            "messages": [
                {"role": "user", "content": ASK},
                {"role": "assistant", "content": ANSWER},
            ]
        },
        ASK,
        False,
    ),
    ("dpo", "preference", {"prompt": ASK, "chosen": ANSWER, "rejected": "No idea."}, ASK, False),
    ("orpo", "preference", {"prompt": ASK, "chosen": ANSWER, "rejected": "No idea."}, ASK, False),
    (
        "dpo",
        "preference",
        {"prompt": [{"role": "user", "content": ASK}], "chosen": ANSWER, "rejected": "No."},
        ASK,
        True,
    ),
    (
        "orpo",
        "preference",
        {"prompt": [{"role": "user", "content": ASK}], "chosen": ANSWER, "rejected": "No."},
        ASK,
        True,
    ),
]
# kto declares its own row format (unpaired); its prompt is a "prompt" field like dpo's.
KTO_CASE = ("kto", "unpaired", {"prompt": ASK, "completion": ANSWER, "label": True}, ASK, False)
KTO_CHAT_CASE = (
    "kto",
    "unpaired",
    {"prompt": [{"role": "user", "content": ASK}], "completion": ANSWER, "label": False},
    ASK,
    True,
)


@pytest.mark.parametrize("tok_name", ["bpe-chat-template", "bpe-no-template", "bert-vocab"])
@pytest.mark.parametrize(("task", "fmt", "row", "given", "chat"), [*CASES, KTO_CASE, KTO_CHAT_CASE])
def test_generation_prompt_equals_training_prompt(
    tok_name: str, task: str, fmt: str, row: dict, given: Any, chat: bool
) -> None:
    tok = _tokenizers()[tok_name]
    trained = _trained_prompt(task, tok, fmt, row)
    at_generation = generation_prompt_ids(given, fmt, tok, "auto", chat)
    assert at_generation == trained
    assert at_generation[-1:] != [tok.eos_token_id] or tok.eos_token_id is None


@pytest.mark.parametrize("tok_name", ["bpe-chat-template", "bert-vocab"])
def test_text_and_rlhf_prompts(tok_name: str) -> None:
    tok = _tokenizers()[tok_name]
    # sft on raw text: generation continues the text exactly as training tokenized it.
    feat = _task("sft", tok, "text").encode({"text": ASK + " " + ANSWER})
    ids = generation_prompt_ids(ASK, "text", tok)
    assert feat["input_ids"][: len(ids)] == ids
    # rlhf trains on the prompt ids sampling starts from; generate gives the same.
    for prompt, chat in ((ASK, False), ([{"role": "user", "content": ASK}], True)):
        trained = encode_prompt_ids(prompt, tok, "auto", 10**6)
        assert generation_prompt_ids(ASK, "prompt", tok, "auto", chat) == trained


def test_generate_prompts_a_dpo_model_like_training(tmp_path: Path) -> None:
    from lmtune.evaluate.run import run_generate

    tok = _tokenizers()["bert-vocab"]
    model = make_causal("llama", tok)
    save_model(model, tok, tmp_path / "m", extra={"task": "dpo", "format": "preference"})
    prompt_ids = _task("dpo", tok, "preference").encode(CASES[2][2])["prompt_ids"]
    assert tok.sep_token_id not in prompt_ids  # what the old generate appended
    with torch.no_grad():
        ref = model.eval().generate(
            torch.tensor([prompt_ids]), max_new_tokens=4, do_sample=False, pad_token_id=0
        )[0, len(prompt_ids) :]
    expected = tok.decode(ref, skip_special_tokens=True)
    assert run_generate(tmp_path / "m", [ASK], max_new_tokens=4) == [expected]


@pytest.mark.parametrize("tok_name", ["bpe-chat-template", "bert-vocab"])
@pytest.mark.parametrize(("task", "fmt", "row", "given", "chat"), [*CASES, KTO_CASE])
def test_sample_prompts_are_the_training_prompts(
    tok_name: str, task: str, fmt: str, row: dict, given: Any, chat: bool
) -> None:
    from lmtune.evaluate.samples import pick_prompts

    tok = _tokenizers()[tok_name]
    trained = _trained_prompt(task, tok, fmt, row)
    split, picked = pick_prompts({"eval": [row], "test": []}, tok, fmt, "auto", room=10**6)
    assert split == "eval" and [p["ids"] for p in picked] == [trained]
    assert picked[0]["reference"] == ANSWER and ASK in picked[0]["prompt"]
    assert picked[0]["kind"] == {"sft": "output" if fmt == "instruction" else "assistant"}.get(
        task, "desirable" if task == "kto" else "chosen"
    )
    # A prompt longer than the room training had is not sampled.
    assert pick_prompts({"test": [row]}, tok, fmt, "auto", room=len(trained) - 1) == (None, [])


def test_a_text_row_is_cut_into_prompt_and_reference() -> None:
    from lmtune.evaluate.samples import TEXT_PROMPT_WORDS, printable, sample_prompt

    words = [f"w{i}" for i in range(TEXT_PROMPT_WORDS + 5)]
    s = sample_prompt({"text": " ".join(words)})
    assert s["prompt"] == " ".join(words[:TEXT_PROMPT_WORDS])
    assert s["reference"] == " ".join(words[TEXT_PROMPT_WORDS:])
    assert s["source"] == {"text": s["prompt"]} and s["kind"] == "continuation"
    assert printable("a\rb\x1b[2Jc\nd\te") == "a\ufffdb\ufffd[2Jc\nd\te"
