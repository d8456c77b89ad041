"""`lmtune serve` over real HTTP: a uvicorn server on a free 127.0.0.1 port (in a background
thread, or `lmtune serve` as a subprocess) with a tiny causal LM and a tiny classifier.

Answers are checked against an independently loaded copy of the same model (transformers'
own generate() and forward), so "greedy", "max_tokens" and "usage" mean what they say.
"""

from __future__ import annotations

import copy
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lmtune.models.export import load_trained, save_model
from lmtune.ops.serve import ServeSettings, serve_in_thread
from lmtune.ops.serve_engine import Engine, load_engine
from tiny import make_bert_tokenizer, make_causal, make_encoder_classifier, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
PROMPT = "The weather today is"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def call(
    url: str,
    method: str = "GET",
    path: str = "/",
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> Reply:
    """One HTTP request with http.client (no client library between the test and the server)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return Reply(
            resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
        )
    finally:
        conn.close()


def post(url: str, path: str, body: Any, **kw: Any) -> Reply:
    return call(url, "POST", path, body, **kw)


def events(reply: Reply) -> list[dict[str, Any]]:
    """Parse a server-sent-events body: `data: {...}` blocks ending with `data: [DONE]`."""
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in reply.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), reply.text
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[len("data: ") :]) for b in blocks[:-1]]


def assert_error(reply: Reply, status: int, fragment: str = "") -> dict[str, Any]:
    """A JSON error in OpenAI's shape with the given status (and message fragment)."""
    assert reply.status == status, reply.text
    assert (
        reply.headers["content-type"].startswith("application/json")
        and "Traceback" not in reply.text
    )
    err = reply.json()["error"]
    assert isinstance(err["message"], str) and fragment in err["message"], err
    return err


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    tok = copy.deepcopy(make_tokenizer(chat_template=TEMPLATE))
    save_model(
        make_causal("llama", tok),
        tok,
        root / "chatbot",
        extra={"task": "sft", "format": "chat", "template": "auto", "max_length": 128},
    )
    btok = make_bert_tokenizer()
    clf = make_encoder_classifier("bert", 2, btok, seed=3)
    clf.config.id2label, clf.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    save_model(
        clf,
        btok,
        root / "sentiment",
        extra={"task": "classification", "format": "classification", "max_length": 64},
    )
    return {"root": root, "causal": root / "chatbot", "clf": root / "sentiment"}


@dataclass
class Served:
    url: str
    engine: Engine
    log: Path
    ref: Any  # (model, tokenizer, meta): an independent copy of the same model folder

    def log_lines(self) -> list[dict[str, Any]]:
        return (
            [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []
        )


@pytest.fixture(scope="module")
def lm(folders: dict[str, Path]) -> Iterator[Served]:
    engine = load_engine(folders["causal"])
    log = folders["root"] / "lm_predictions.jsonl"
    settings = {
        "api_key": KEY,
        "max_request_bytes": 4096,
        "max_tokens_cap": 64,
        "max_batch": 4,
        "log_predictions": log,
    }
    with serve_in_thread(engine, ServeSettings(port=0, **settings)) as url:
        yield Served(url, engine, log, load_trained(folders["causal"]))


@pytest.fixture(scope="module")
def classifier(folders: dict[str, Path]) -> Iterator[Served]:
    engine = load_engine(folders["clf"])
    log = folders["root"] / "clf_predictions.jsonl"
    with serve_in_thread(engine, ServeSettings(port=0, max_batch=4, log_predictions=log)) as url:
        yield Served(url, engine, log, load_trained(folders["clf"]))


def greedy(ref: Any, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding of the reference copy (stops at EOS)."""
    model, tok, _ = ref
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


def test_completion_is_greedy_generate_with_consistent_usage(lm: Served) -> None:
    tok = lm.ref[1]
    r = post(
        lm.url,
        "/v1/completions",
        {
            "model": "chatbot",
            "prompt": PROMPT,
            "max_tokens": 6,
            "temperature": 0,
            "user": "ignored-field",
        },
        headers=AUTH,
    )
    assert r.status == 200, r.text
    body = r.json()
    assert (
        body["object"] == "text_completion"
        and body["id"].startswith("cmpl-")
        and body["model"] == "chatbot"
    )
    assert isinstance(body["created"], int)
    ids = tok(PROMPT)["input_ids"]
    expected = greedy(lm.ref, ids, 6)
    assert len(expected) == 6 and tok.eos_token_id not in expected  # so max_tokens is what ends it
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["text"] == tok.decode(expected, skip_special_tokens=True)
    assert body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 6,
        "total_tokens": len(ids) + 6,
    }
    # A list of prompts: one choice each, usage summed.
    r = post(
        lm.url,
        "/v1/completions",
        {"prompt": [PROMPT, "Hello"], "max_tokens": 3, "temperature": 0},
        headers=AUTH,
    )
    two = r.json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert two["choices"][0]["text"] == tok.decode(expected[:3])
    assert two["usage"]["prompt_tokens"] == len(ids) + len(tok("Hello")["input_ids"])
    # Seeded sampling repeats; the default max_tokens is OpenAI's 16.
    sampled = [
        post(
            lm.url,
            "/v1/completions",
            {"prompt": PROMPT, "temperature": 1.0, "top_p": 0.9, "seed": 5},
            headers=AUTH,
        ).json()
        for _ in range(2)
    ]
    assert sampled[0]["choices"][0]["text"] == sampled[1]["choices"][0]["text"]
    assert sampled[0]["usage"]["completion_tokens"] <= 16


def test_streaming_matches_non_streaming_and_stop_strings_cut(lm: Served) -> None:
    req = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    whole = post(lm.url, "/v1/completions", req, headers=AUTH).json()
    text = whole["choices"][0]["text"]
    chunks = events(
        post(
            lm.url,
            "/v1/completions",
            {**req, "stream": True, "stream_options": {"include_usage": True}},
            headers=AUTH,
        )
    )
    assert len({c["id"] for c in chunks}) == 1 and all(
        c["object"] == "text_completion" for c in chunks
    )
    pieces = [c for c in chunks if c["choices"]]
    assert len(pieces) > 2 and "".join(c["choices"][0]["text"] for c in pieces) == text
    assert [c["choices"][0]["finish_reason"] for c in pieces][-1] == whole["choices"][0][
        "finish_reason"
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in pieces[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    # A stop string: the text ends just before its first occurrence, finish_reason "stop".
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].isalnum())
    for stream in (False, True):
        r = post(
            lm.url,
            "/v1/completions",
            {**req, "stop": ["@@nope", stop], "stream": stream},
            headers=AUTH,
        )
        if stream:
            got = [c["choices"][0] for c in events(r)]
            cut, finish = "".join(c["text"] for c in got), got[-1]["finish_reason"]
        else:
            cut, finish = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
        assert cut == text[: text.find(stop)] and finish == "stop"


def test_chat_uses_the_model_chat_template(lm: Served) -> None:
    _, tok, _ = lm.ref
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello! How are you?"},
    ]
    r = post(
        lm.url,
        "/v1/chat/completions",
        {"messages": messages, "max_tokens": 5, "temperature": 0},
        headers=AUTH,
    )
    body = r.json()
    assert (
        r.status == 200
        and body["object"] == "chat.completion"
        and body["id"].startswith("chatcmpl-")
    )
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    expected = greedy(lm.ref, ids, 5)
    msg = body["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": tok.decode(expected, skip_special_tokens=True)}
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == len(
        expected
    )
    # Content as a list of text parts, streamed: the same answer, role first.
    parts = [
        messages[0],
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello! "},
                {"type": "text", "text": "How are you?"},
            ],
        },
    ]
    chunks = events(
        post(
            lm.url,
            "/v1/chat/completions",
            {"messages": parts, "max_tokens": 5, "temperature": 0, "stream": True},
            headers=AUTH,
        )
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == msg["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]


def test_a_client_that_goes_away_cancels_its_stream(lm: Served) -> None:
    forwards: list[float] = []

    def slow(*_: Any) -> None:  # 20 ms a token: 64 tokens would take over a second
        forwards.append(time.perf_counter())
        time.sleep(0.02)

    handle = lm.engine.model.register_forward_pre_hook(slow)
    host, port = lm.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
    ).encode()
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            seen = b""
            while b"data: " not in seen:
                seen += sock.recv(4096)
        # The generation stops at its next token, so the worker is soon free for the next request.
        after = post(lm.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, headers=AUTH)
    finally:
        handle.remove()
    assert after.status == 200 and len(forwards) < 32, len(forwards)
