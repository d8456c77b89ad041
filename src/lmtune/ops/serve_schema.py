"""Request models and response shapes of `lmtune serve`, following OpenAI's API.

Requests are validated strictly (a string where a number belongs is a 422, not a guess);
fields OpenAI clients send that lmtune does not use (user, logprobs, presence_penalty, ...)
are ignored so standard clients work unchanged. Responses carry OpenAI's fields: id, object,
created, model, choices (text or message, index, finish_reason) and usage.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4  # as OpenAI: up to 4 stop sequences
MAX_STOP_CHARS = 256  # each is matched against the text after every token: keep that cheap


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    """stream_options: include_usage adds a last chunk with the usage counts."""

    include_usage: bool = False


class _Sampling(_Request):
    model: str | None = None  # one model per server: accepted, not used to route
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for chat
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences must have 1 to {MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> tuple[str, ...]:
        """stop as a tuple of strings (empty when not given)."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def requested_tokens(self) -> int | None:
        """max_tokens (or max_completion_tokens) as the client gave it."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions: continue a raw prompt (or a list of prompts)."""

    prompt: str | list[str] = Field(..., min_length=1)


class TextPart(_Request):
    """One part of a message's content list (only text parts are understood)."""

    type: Literal["text"]
    text: str


class Message(_Request):
    """A chat message; content is a string or a list of text parts."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: answer the last user message, in the trained chat format."""

    messages: list[Message] = Field(..., min_length=1)


class PairInput(_Request):
    """A text pair for a model trained on pairs (e.g. paraphrase detection)."""

    text: str
    text_pair: str | None = None


class ClassifyRequest(_Request):
    """POST /v1/classify: label one input or a list of inputs."""

    model: str | None = None
    input: str | PairInput | list[str | PairInput]

    def items(self) -> list[dict[str, str]]:
        """Every input as {"text", optional "text_pair"}."""
        raw = self.input if isinstance(self.input, list) else [self.input]
        out = []
        for x in raw:
            if isinstance(x, str):
                out.append({"text": x})
            else:
                out.append(
                    {
                        "text": x.text,
                        **({"text_pair": x.text_pair} if x.text_pair is not None else {}),
                    }
                )
        return out


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    """A unique response id such as cmpl-3f2a..."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage block."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    rid: str, model: str, texts: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A text_completion body; texts holds (text, finish_reason) per prompt."""
    choices = [
        {"index": i, "text": t, "logprobs": None, "finish_reason": f}
        for i, (t, f) in enumerate(texts)
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_response(
    rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A chat.completion body with one assistant message."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def stream_chunk(
    rid: str, model: str, chat: bool, text: str | None, finish: str | None, first: bool = False
) -> dict[str, Any]:
    """One streamed chunk: chat.completion.chunk (delta) or text_completion (text)."""
    if chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()
