"""Request models and response shapes of `lmtune serve`, following OpenAI's API.

Requests are validated strictly (a string where a number belongs is a 422, not a guess).
Bookkeeping fields OpenAI clients send (user, metadata, store, service_tier) are accepted
and ignored; any other field lmtune does not implement (tools, response_format, logit_bias,
...) is a 400 that names it, never a silent 200 that ignored what the client asked for.
Responses carry OpenAI's fields: id, object, created, model, choices (text or message,
index, logprobs, finish_reason) and usage.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4  # as OpenAI: up to 4 stop sequences
MAX_STOP_CHARS = 256  # each is matched against the text after every token: keep that cheap


SEED_MAX = 2**63 - 1  # OpenAI's seed is an int64; torch takes up to 2**64 - 1


class _Request(BaseModel):
    # extra="forbid": an unknown field is reported (400 naming it), not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Ignored(_Request):
    """Fields that change nothing about the answer: accepted so standard clients work."""

    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class StreamOptions(_Request):
    """stream_options: include_usage adds a last chunk with the usage counts."""

    include_usage: bool = False


class _Sampling(_Ignored):
    model: str | None = None  # one model per server: another name is a 404
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for chat
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)

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
    logprobs: int | None = Field(None, ge=0, le=5)  # top alternatives per token, as OpenAI

    def top_logprobs_count(self) -> int | None:
        """How many alternatives per token to report (None: no logprobs)."""
        return self.logprobs


class TextPart(_Request):
    """One part of a message's content list (only text parts are understood)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class Message(_Request):
    """A chat message; content is a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore", strict=True)  # name, ... change nothing here

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
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def top_logprobs_count(self) -> int | None:
        """How many alternatives per token to report (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class PairInput(_Request):
    """A text pair for a model trained on pairs (e.g. paraphrase detection)."""

    text: str
    text_pair: str | None = None


class ClassifyRequest(_Ignored):
    """POST /v1/classify: label one input or a list of inputs."""

    model: str | None = None
    input: str | PairInput | list[str | PairInput]

    @field_validator("input")
    @classmethod
    def _not_blank(cls, v: Any) -> Any:
        # Training rejects empty texts, so a classifier has never seen one: refuse, not guess.
        for i, x in enumerate(v if isinstance(v, list) else [v]):
            texts = [x] if isinstance(x, str) else [x.text, x.text_pair or "x"]
            if any(not t.strip() for t in texts):
                where = f"input[{i}]" if isinstance(v, list) else "input"
                raise ValueError(f"{where} is empty or only whitespace; send text to classify")
        return v

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
    rid: str,
    model: str,
    texts: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: list[Any] | None = None,
) -> dict[str, Any]:
    """A text_completion body; texts holds (text, finish_reason) per choice."""
    choices = [
        {
            "index": i,
            "text": t,
            "logprobs": logprobs[i] if logprobs else None,
            "finish_reason": f,
        }
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
    rid: str,
    model: str,
    texts: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: list[Any] | None = None,
) -> dict[str, Any]:
    """A chat.completion body with one assistant message per (text, finish_reason) choice."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs[i] if logprobs else None,
            "finish_reason": finish,
        }
        for i, (text, finish) in enumerate(texts)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat's logprobs block from per-token entries {token, logprob, top: [(token, logprob)]}."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**one(e["token"], e["logprob"]), "top_logprobs": [one(t, lp) for t, lp in e["top"]]}
            for e in entries
        ]
    }


def completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The legacy completions logprobs block (tokens, token_logprobs, top_logprobs, offsets)."""
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [dict(e["top"]) for e in entries],
        "text_offset": offsets,
    }


def stream_chunk(
    rid: str,
    model: str,
    chat: bool,
    text: str | None,
    finish: str | None,
    first: bool = False,
    logprobs: list[dict[str, Any]] | None = None,
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
            "logprobs": chat_logprobs(logprobs) if logprobs else None,
            "finish_reason": finish,
        }
        kind = "chat.completion.chunk"
    else:
        choice = {
            "index": 0,
            "text": text or "",
            "logprobs": completion_logprobs(logprobs) if logprobs else None,
            "finish_reason": finish,
        }
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
