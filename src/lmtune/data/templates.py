"""Turn SFT rows into token ids and labels, with the loss only on what the model should say.

A row is rendered as alternating segments: prompt text (labels -100) and response text
(labels = the token ids, followed by EOS, also in the loss so the model learns to stop).
Each segment is tokenized on its own, so the prompt ids used in training are exactly the ids
`encode_prompt` produces at generation time (tokenizing the joined string could merge tokens
across the prompt/response boundary and blur the mask).

Templates: the tokenizer's own chat template when it has one and template is "auto";
otherwise the built-in "alpaca" (instruction rows) or "chatml" (chat rows).
"""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from lmtune.data.formats import FORMATS, required_fields
from lmtune.errors import UserError

IGNORE = -100
TEMPLATES = ("auto", "alpaca", "chatml")

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
)

Segments = list[tuple[str, bool]]  # (text, in_loss)


def _uses_chat_template(tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    if template not in TEMPLATES:
        raise UserError(
            f"data.template {template!r} is unknown (use one of {', '.join(TEMPLATES)})"
        )
    return template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def _alpaca_prompt(row: dict[str, Any]) -> str:
    instruction = str(row.get("instruction") or "")
    extra = str(row.get("input") or "")
    if extra:
        return (
            f"{ALPACA_HEADER_INPUT}### Instruction:\n{instruction}\n\n"
            f"### Input:\n{extra}\n\n### Response:\n"
        )
    return f"{ALPACA_HEADER}### Instruction:\n{instruction}\n\n### Response:\n"


def _instruction_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    user = str(row.get("instruction") or "")
    if row.get("input"):
        user = f"{user}\n\n{row['input']}"
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": str(row.get("output") or "")},
    ]


def _chatml_segments(messages: list[dict[str, Any]]) -> Segments:
    segments: Segments = []
    prompt = ""
    for msg in messages:
        role, content = msg["role"], str(msg.get("content") or "")
        if role == "assistant":
            segments.append((prompt + "<|im_start|>assistant\n", False))
            # <|im_end|> closes the turn and is in the loss: the model must learn to end turns.
            segments.append((content + "<|im_end|>", True))
            prompt = "\n"
        else:
            prompt += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    # Turns after the last assistant message teach nothing; they are dropped (as below).
    return segments


def _apply(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **kwargs: Any
) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as exc:
        # Templates reject rows they cannot render (e.g. roles that do not alternate):
        # a reason to reject this row, not the run.
        raise ValueError(f"the tokenizer's chat template rejected this row: {exc}") from exc


def _template_segments(
    messages: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase
) -> Segments:
    """Split a chat-template rendering into prompt/response segments by rendering prefixes.

    For each assistant turn i: render(messages[:i], generation prompt) is the prompt, and
    render(messages[:i+1]) minus that prefix is the response (with the template's own
    end-of-turn marker). Trailing whitespace after the turn goes back to the prompt side.
    """
    segments: Segments = []
    done = ""  # rendered text already assigned to segments
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _apply(tokenizer, messages[: i + 1])
        if not before.startswith(done) or not upto.startswith(before):
            raise UserError(
                "the tokenizer's chat template renders earlier turns differently once later turns "
                "are added, so response tokens cannot be located: set data.template: chatml"
            )
        response = upto[len(before) :].rstrip()
        segments.append((before[len(done) :], False))
        segments.append((response, True))
        done = before + response
    return segments


def _messages(row_or_messages: Any) -> list[dict[str, Any]]:
    if isinstance(row_or_messages, dict):
        row_or_messages = row_or_messages.get("messages")
    if not isinstance(row_or_messages, list) or not all(
        isinstance(m, dict) and "role" in m for m in row_or_messages
    ):
        raise ValueError("chat row needs 'messages': a list of {role, content}")
    return row_or_messages


def _segments(
    row: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    """(segments, rendered_by_chat_template) for one row."""
    chat_tpl = _uses_chat_template(tokenizer, template)
    if fmt == "text":
        return [(str(row.get("text") or ""), True)], False
    if fmt == "instruction":
        if chat_tpl:
            return _template_segments(_instruction_messages(row), tokenizer), True
        if template == "chatml":
            return _chatml_segments(_instruction_messages(row)), False
        return [(_alpaca_prompt(row), False), (str(row.get("output") or ""), True)], False
    if fmt == "chat":
        messages = _messages(row)
        if chat_tpl:
            return _template_segments(messages, tokenizer), True
        return _chatml_segments(messages), False
    raise ValueError(f"SFT rows must be text, instruction or chat, not {fmt!r}")


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The BOS the tokenizer would add itself (Llama: yes; GPT-2, Qwen2: none)."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and ids[:1] == [bos] else []


def _assemble(
    segments: Segments, parts: list[list[int]], bos: list[int], eos: int | None
) -> tuple[list[int], list[int]]:
    """ids and labels from each segment's token ids (`parts`, in order): BOS first (unless
    the chat template wrote its own: then `bos` is []), EOS after each response."""
    ids: list[int] = list(bos)
    labels: list[int] = [IGNORE] * len(ids)
    for (_, in_loss), part in zip(segments, parts, strict=True):
        part = list(part)
        if in_loss and eos is not None and (not part or part[-1] != eos):
            part.append(eos)
        ids.extend(part)
        labels.extend(part if in_loss else [IGNORE] * len(part))
    return ids, labels


def _encode_many(
    rendered: list[tuple[Segments, bool]], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of rendered rows, every segment of every row in one tokenizer call (the
    same ids: each segment is still tokenized on its own). Chat templates write their own
    BOS into the text; built-in ones rely on the tokenizer's."""
    texts = [text for segments, _ in rendered for text, _ in segments if text]
    tokens = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    bos, eos = _bos(tokenizer), tokenizer.eos_token_id
    out = []
    for segments, by_template in rendered:
        parts = [next(tokens) if text else [] for text, _ in segments]
        out.append(_assemble(segments, parts, [] if by_template else bos, eos))
    return out


def _sft_feature(ids: list[int], labels: list[int], max_length: int) -> dict[str, Any]:
    ids, labels = ids[:max_length], labels[:max_length]
    # Position 0 is never predicted (nothing comes before it), so it cannot carry the loss.
    if labels[1:].count(IGNORE) >= len(labels) - 1:  # (also when nothing is left)
        raise ValueError(f"no response tokens left within max_length={max_length}")
    return {"input_ids": ids, "labels": labels, "length": len(ids)}


def _sft_segments(
    row: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    segments, by_template = _segments(row, fmt, tokenizer, template)
    if not any(in_loss for _, in_loss in segments):
        raise ValueError("row has no response to learn (chat rows need an assistant message)")
    return segments, by_template


def encode_sft_row(
    row: dict[str, Any],
    fmt: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str = "auto",
) -> dict[str, Any]:
    """Tokenize one SFT row: {"input_ids", "labels", "length"}, prompt labels = -100.

    text: every token is in the loss. instruction/chat: only responses (assistant turns),
    each followed by EOS (in the loss even when pad == eos). Truncation keeps the start;
    raises ValueError when no response token is left inside max_length.
    """
    out = encode_sft_rows([row], fmt, tokenizer, max_length, template)[0]
    if isinstance(out, ValueError):
        raise out
    return out


def encode_sft_rows(
    rows: list[dict[str, Any]],
    fmt: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str = "auto",
) -> list[dict[str, Any] | ValueError]:
    """encode_sft_row over many rows with one batched tokenizer call for all their segments.
    A row that cannot be encoded gives its ValueError in its place."""
    rendered: list[tuple[Segments, bool] | ValueError] = []
    for row in rows:
        try:
            rendered.append(_sft_segments(row, fmt, tokenizer, template))
        except ValueError as exc:
            rendered.append(exc)
    ok = [r for r in rendered if not isinstance(r, ValueError)]
    encoded = iter(_encode_many(ok, tokenizer))
    out: list[dict[str, Any] | ValueError] = []
    for r in rendered:
        if isinstance(r, ValueError):
            out.append(r)
            continue
        try:
            out.append(_sft_feature(*next(encoded), max_length))
        except ValueError as exc:
            out.append(exc)
    return out


def _prompt_segments(
    row_or_messages: Any, fmt: str, tokenizer: PreTrainedTokenizerBase, template: str
) -> tuple[Segments, bool]:
    """Segments before the last response, built by the same code as training rows.

    The row is completed with an empty final response (replacing a reference answer if the
    chat ends with one), so earlier turns render exactly as they do in training.
    """
    if fmt == "text":
        text = row_or_messages.get("text") if isinstance(row_or_messages, dict) else row_or_messages
        return [(str(text or ""), False)], False
    if fmt == "instruction":
        row = {**row_or_messages, "output": ""}
    elif fmt == "chat":
        messages = list(_messages(row_or_messages))
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        row = {"messages": [*messages, {"role": "assistant", "content": ""}]}
    else:
        raise ValueError(f"SFT rows must be text, instruction or chat, not {fmt!r}")
    segments, by_template = _segments(row, fmt, tokenizer, template)
    last = max(i for i, (_, in_loss) in enumerate(segments) if in_loss)
    return segments[:last], by_template


def render_prompt(
    row_or_messages: Any, fmt: str, tokenizer: PreTrainedTokenizerBase, template: str = "auto"
) -> str:
    """The prompt text for generation: everything up to where the (last) response starts.

    Chat rows ending in an assistant message drop it (it is the reference answer); earlier
    assistant turns keep the EOS they carry in training. Text rows return their text
    (generation continues it). Prefer encode_prompt to tokenize: it adds BOS exactly as
    training does (built-in templates leave the tokenizer's BOS out of the string; chat
    templates write theirs into it).
    """
    segments, _ = _prompt_segments(row_or_messages, fmt, tokenizer, template)
    eos = tokenizer.eos_token or ""
    return "".join(t + eos if in_loss and not t.endswith(eos) else t for t, in_loss in segments)


def encode_prompt(
    row_or_messages: Any, fmt: str, tokenizer: PreTrainedTokenizerBase, template: str = "auto"
) -> list[int]:
    """Token ids of the generation prompt, identical to the prompt part of encode_sft_row."""
    rendered = _prompt_segments(row_or_messages, fmt, tokenizer, template)
    ids, _ = _encode_many([rendered], tokenizer)[0]
    return ids


# Row formats whose prompt is a "prompt" field (a text or a message list) before a response.
_PROMPT_FIELD_FORMATS = ("preference", "pairwise", "dialogue_pair", "prompt")


def _prompt_field_format(fmt: str) -> bool:
    """Built-in prompt formats, and task-declared ones whose rows require a "prompt" (kto's)."""
    if fmt in _PROMPT_FIELD_FORMATS:
        return True
    return fmt not in FORMATS and "prompt" in required_fields(fmt)


def generation_prompt_ids(
    prompt: Any,
    fmt: str,
    tokenizer: PreTrainedTokenizerBase,
    template: str = "auto",
    chat_prompts: bool = False,
) -> list[int]:
    """The token ids a causal model trained on `fmt` rows sees before its response.

    The one prompt encoding shared by training (sft, dpo, orpo, rlhf), `lmtune generate`,
    serve and the reports, so a model is never prompted differently from how it learnt.
    `prompt` is what a user gives (a string or a message list) or a canonical row;
    `chat_prompts` says the model's preference/RL prompts were message lists (then a plain
    string is the user's turn and goes through the chat template, as in training).
    No EOS is ever appended: training never saw one after a prompt.
    """
    if isinstance(prompt, dict):  # a canonical row: its own prompt part
        if _prompt_field_format(fmt):
            return generation_prompt_ids(prompt["prompt"], fmt, tokenizer, template, chat_prompts)
        return encode_prompt(prompt, fmt, tokenizer, template)
    as_messages = isinstance(prompt, list)
    if fmt == "instruction" and not as_messages:
        return encode_prompt({"instruction": prompt, "input": ""}, fmt, tokenizer, template)
    if fmt == "chat" or as_messages or (chat_prompts and _prompt_field_format(fmt)):
        messages = prompt if as_messages else [{"role": "user", "content": str(prompt)}]
        return encode_prompt(messages, "chat", tokenizer, template)
    return encode_prompt({"text": str(prompt)}, "text", tokenizer, template)
