"""SFT row encoding: exactly which tokens carry the loss, for each format and template."""

from __future__ import annotations

import copy

import pytest
from tokenizers.processors import TemplateProcessing

from lmtune.data.collate import pad_batch
from lmtune.data.templates import encode_prompt, encode_sft_row, render_prompt
from lmtune.errors import UserError
from tiny import make_tokenizer

# A Qwen2-style chat template (ChatML), as shipped in tokenizer_config.json files.
CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
INSTRUCTION = {
    "instruction": "Tell me a joke.",
    "input": "",
    "output": "Why did the chicken cross the road?",
}
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\nTell me a joke.\n\n### Response:\n"
)
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "I am fine."},
    ]
}


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def loss_spans(tok, feat: dict) -> list[str]:
    """Decoded runs of consecutive in-loss tokens."""
    spans, cur = [], []
    for i, lab in zip(feat["input_ids"], feat["labels"], strict=True):
        if lab == -100:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    if cur:
        spans.append(cur)
    return [tok.decode(s) for s in spans]


def test_alpaca_instruction_mask_is_exact():
    tok = make_tokenizer()
    feat = encode_sft_row(INSTRUCTION, "instruction", tok, max_length=256)
    prompt, response = ids(tok, ALPACA_PROMPT), ids(tok, INSTRUCTION["output"])
    eos = tok.eos_token_id
    # Hand-checked on this tokenizer: 60 prompt tokens, 14 response tokens, then EOS.
    assert (len(prompt), len(response)) == (60, 14)
    assert feat["input_ids"] == prompt + response + [eos]
    assert feat["labels"] == [-100] * 60 + response + [eos]
    assert feat["labels"][74] == eos and feat["length"] == 75
    assert loss_spans(tok, feat) == ["Why did the chicken cross the road?</s>"]
    assert render_prompt(INSTRUCTION, "instruction", tok) == ALPACA_PROMPT
    assert encode_prompt(INSTRUCTION, "instruction", tok) == prompt


def test_alpaca_with_input_uses_input_header():
    tok = make_tokenizer()
    row = {**INSTRUCTION, "input": "Make it short."}
    text = render_prompt(row, "instruction", tok)
    assert (
        "paired with an input" in text and "### Input:\nMake it short.\n\n### Response:\n" in text
    )


def test_chatml_two_assistant_turns_both_in_loss():
    tok = make_tokenizer()
    feat = encode_sft_row(CHAT, "chat", tok, max_length=256, template="chatml")
    p1 = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )
    r1 = "Hi.<|im_end|>"
    p2 = "\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
    r2 = "I am fine.<|im_end|>"
    eos = tok.eos_token_id
    a, b, c, d = ids(tok, p1), ids(tok, r1) + [eos], ids(tok, p2), ids(tok, r2) + [eos]
    assert feat["input_ids"] == a + b + c + d
    assert feat["labels"] == [-100] * len(a) + b + [-100] * len(c) + d
    # Both EOS positions (end of each assistant turn) are in the loss.
    eos_positions = [len(a) + len(b) - 1, len(feat["labels"]) - 1]
    assert [feat["labels"][i] for i in eos_positions] == [eos, eos]
    assert loss_spans(tok, feat) == ["Hi.<|im_end|></s>", "I am fine.<|im_end|></s>"]
    # The generation prompt is the training prefix before the last response, token for token.
    prompt_ids = encode_prompt(CHAT, "chat", tok, template="chatml")
    assert prompt_ids == a + b + c
    assert render_prompt(CHAT, "chat", tok, template="chatml") == p1 + r1 + "</s>" + p2


def test_tokenizer_chat_template_matches_builtin_chatml():
    plain, templated = make_tokenizer(), make_tokenizer(chat_template=CHATML_JINJA)
    builtin = encode_sft_row(CHAT, "chat", plain, 256, template="chatml")
    auto = encode_sft_row(CHAT, "chat", templated, 256)
    assert auto == builtin
    # template="alpaca"/"chatml" forces the built-in even when the tokenizer has a template.
    forced = encode_sft_row(INSTRUCTION, "instruction", templated, 256, template="alpaca")
    assert forced == encode_sft_row(INSTRUCTION, "instruction", plain, 256)
    # Instruction rows go through the chat template as one user turn.
    inst = encode_sft_row(INSTRUCTION, "instruction", templated, 256)
    assert loss_spans(templated, inst) == ["Why did the chicken cross the road?<|im_end|></s>"]
    assert render_prompt(INSTRUCTION, "instruction", templated).endswith("<|im_start|>assistant\n")


def test_eos_stays_in_loss_when_pad_is_eos():
    tok = copy.deepcopy(make_tokenizer())
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    long = encode_sft_row(INSTRUCTION, "instruction", tok, 256)
    short = encode_sft_row({"text": "Hello!"}, "text", tok, 256)
    assert long["labels"][-1] == tok.eos_token_id
    batch = pad_batch([short, long], pad_id=tok.pad_token_id)
    n = short["length"]
    assert batch["labels"][0, n - 1].item() == tok.eos_token_id  # real EOS kept
    assert (batch["labels"][0, n:] == -100).all()  # padding (same id) is not in the loss
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (long["length"] - n)


def test_text_format_learns_every_token():
    tok = make_tokenizer()
    feat = encode_sft_row({"text": "The quick brown fox."}, "text", tok, 256)
    assert feat["input_ids"] == ids(tok, "The quick brown fox.") + [tok.eos_token_id]
    assert feat["labels"] == feat["input_ids"]


def test_truncation_keeps_start_and_rejects_rows_without_response():
    tok = make_tokenizer()
    full = encode_sft_row(INSTRUCTION, "instruction", tok, 256)
    cut = encode_sft_row(INSTRUCTION, "instruction", tok, 63)
    assert cut["input_ids"] == full["input_ids"][:63] and cut["length"] == 63
    assert cut["labels"][-1] != -100
    with pytest.raises(ValueError, match="no response tokens left within max_length=60"):
        encode_sft_row(INSTRUCTION, "instruction", tok, 60)
    with pytest.raises(ValueError, match="assistant"):
        encode_sft_row({"messages": [{"role": "user", "content": "Hi"}]}, "chat", tok, 256)


def test_bos_added_once_for_tokenizers_that_add_it():
    tok = copy.deepcopy(make_tokenizer())
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    assert tok("Hi")["input_ids"][0] == bos  # like Llama: the tokenizer adds BOS itself
    feat = encode_sft_row(INSTRUCTION, "instruction", tok, 256)
    assert feat["input_ids"][:1] == [bos] and feat["labels"][0] == -100
    assert encode_prompt(INSTRUCTION, "instruction", tok)[:1] == [bos]
    # A chat template that writes BOS itself must not get a second one.
    tok.chat_template = "{{ bos_token }}" + CHATML_JINJA
    feat = encode_sft_row(CHAT, "chat", tok, 256)
    assert feat["input_ids"].count(bos) == 1 and feat["input_ids"][0] == bos


def test_unstable_chat_template_is_a_user_error():
    # Renders only the last message: earlier turns change when turns are added.
    tok = make_tokenizer(
        chat_template="{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(UserError, match="data.template: chatml"):
        encode_sft_row(CHAT, "chat", tok, 256)


def test_chat_template_refusing_a_row_rejects_the_row():
    tok = make_tokenizer(
        chat_template="{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHATML_JINJA
    )
    with pytest.raises(ValueError, match="rejected this row: System role not supported"):
        encode_sft_row(CHAT, "chat", tok, 256)
    ok = encode_sft_row({"messages": CHAT["messages"][1:]}, "chat", tok, 256)
    assert loss_spans(tok, ok) == ["Hi.<|im_end|></s>", "I am fine.<|im_end|></s>"]


@pytest.mark.parametrize("chat_template", [None, CHATML_JINJA, "{{ bos_token }}" + CHATML_JINJA])
@pytest.mark.parametrize("template", ["auto", "alpaca", "chatml"])
def test_batched_encoding_equals_row_by_row(chat_template: str | None, template: str) -> None:
    """The Arrow encoding tokenizes a batch in one call; every feature and every rejection
    equals the one-row encoding, BOS-adding tokenizers included."""
    from lmtune.data.templates import encode_sft_rows

    tok = copy.deepcopy(make_tokenizer())
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    tok.chat_template = chat_template
    cases = {
        "instruction": [
            INSTRUCTION,
            {**INSTRUCTION, "input": "About birds."},
            {"instruction": "x " * 300, "input": "", "output": "too late"},  # cut: no response
            {"instruction": "Say nothing.", "input": "", "output": ""},
        ],
        "chat": [CHAT, {"messages": CHAT["messages"][:2]}, {"messages": CHAT["messages"][1:3]}],
        "text": [{"text": "Plain words to learn."}, {"text": ""}],
    }
    for fmt, rows in cases.items():
        single: list = []
        for row in rows:
            try:
                single.append(encode_sft_row(row, fmt, tok, 64, template))
            except ValueError as exc:
                single.append(str(exc))
        batched = [
            str(f) if isinstance(f, ValueError) else f
            for f in encode_sft_rows(rows, fmt, tok, 64, template)
        ]
        assert batched == single, fmt
        assert any(isinstance(f, str) for f in single) or fmt == "text"
