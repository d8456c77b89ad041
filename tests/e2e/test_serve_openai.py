"""`lmtune serve` as OpenAI clients use it: model names, unsupported fields, logprobs,
penalties, n > 1, seed range, backpressure (429 + Retry-After), deadlines (504), default
max_tokens, large bodies, empty classify inputs and the prediction log's truncation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_serve as ts
import torch
from test_serve import AUTH, PROMPT, Served, assert_error, call, post

from lmtune.ops.serve import ServeSettings, serve_in_thread
from lmtune.ops.serve_engine import load_engine
from lmtune.ops.serve_metrics import PredictionLog, truncate

# The module fixtures of test_serve: the same tiny models and servers.
folders, lm, classifier = ts.folders, ts.lm, ts.classifier


def test_unknown_model_is_404_and_models_id_route(lm: Served, classifier: Served) -> None:
    for path, body in (
        ("/v1/completions", {"model": "gpt-4o", "prompt": PROMPT, "max_tokens": 1}),
        (
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}]},
        ),
    ):
        err = assert_error(post(lm.url, path, body, headers=AUTH), 404, "'gpt-4o' does not exist")
        assert err["code"] == "model_not_found" and err["type"] == "not_found_error"
    err = assert_error(post(classifier.url, "/v1/classify", {"model": "x", "input": "a"}), 404)
    assert err["code"] == "model_not_found"
    ok = post(
        lm.url,
        "/v1/completions",
        {"model": "chatbot", "prompt": PROMPT, "max_tokens": 1},
        headers=AUTH,
    )
    assert ok.status == 200
    got = call(lm.url, path="/v1/models/chatbot", headers=AUTH)
    assert got.status == 200 and got.json()["id"] == "chatbot" and got.json()["object"] == "model"
    assert assert_error(call(lm.url, path="/v1/models/other", headers=AUTH), 404)["code"] == (
        "model_not_found"
    )


def test_unsupported_fields_are_400_naming_them(lm: Served) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for field, value in (
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"5": 10}),
    ):
        err = assert_error(
            post(lm.url, "/v1/chat/completions", {**chat, field: value}, headers=AUTH),
            400,
            f"{field}: not supported",
        )
        assert err["param"] == field
    ok = post(lm.url, "/v1/chat/completions", {**chat, "user": "u1", "store": False}, headers=AUTH)
    assert ok.status == 200, ok.text


def _ref_logits(lm: Served, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.ref[0](input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_logprobs_match_the_model(lm: Served) -> None:
    tok = lm.ref[1]
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2}
    r = post(lm.url, "/v1/completions", body, headers=AUTH).json()
    lp = r["choices"][0]["logprobs"]
    ids = tok(PROMPT)["input_ids"]
    expect = torch.log_softmax(_ref_logits(lm, ids), -1)
    first = int(expect.argmax())
    assert lp["tokens"][0] == tok.decode([first])
    assert lp["token_logprobs"][0] == pytest.approx(float(expect[first]), abs=1e-4)
    assert all(len(t) == 2 for t in lp["top_logprobs"]) and len(lp["tokens"]) >= 1
    assert lp["text_offset"][0] == 0
    chat = {
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 3,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    c = post(lm.url, "/v1/chat/completions", chat, headers=AUTH).json()["choices"][0]
    content = c["logprobs"]["content"]
    assert content and all(len(e["top_logprobs"]) == 3 for e in content)
    assert all(e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"] for e in content)
    assert "".join(e["token"] for e in content) == c["message"]["content"]


def test_penalties_follow_openais_formula(lm: Served) -> None:
    tok = lm.ref[1]
    f, p, steps = 1.5, 0.7, 8
    body = {
        "prompt": PROMPT,
        "max_tokens": steps,
        "temperature": 0,
        "frequency_penalty": f,
        "presence_penalty": p,
    }
    got = post(lm.url, "/v1/completions", body, headers=AUTH).json()["choices"][0]["text"]
    ids = tok(PROMPT)["input_ids"]
    out: list[int] = []
    for _ in range(steps):  # the reference: plain forward passes, the formula by hand
        logits = _ref_logits(lm, ids + out)
        for t in set(out):
            logits[t] -= f * out.count(t) + p
        nxt = int(logits.argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    assert got == tok.decode(out, skip_special_tokens=True)


def test_n_choices_are_seeded_and_counted(lm: Served) -> None:
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 1.0, "seed": 7, "n": 3}
    a = post(lm.url, "/v1/completions", body, headers=AUTH).json()
    b = post(lm.url, "/v1/completions", body, headers=AUTH).json()
    one = post(lm.url, "/v1/completions", {**body, "n": 1}, headers=AUTH).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert a["choices"][0]["text"] == one["choices"][0]["text"]
    assert len({c["text"] for c in a["choices"]}) > 1
    n_prompt = len(lm.ref[1](PROMPT)["input_ids"])
    assert a["usage"]["prompt_tokens"] == 3 * n_prompt
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": 2}
    assert len(post(lm.url, "/v1/chat/completions", chat, headers=AUTH).json()["choices"]) == 2


def test_seed_out_of_range_and_empty_classify_are_422(lm: Served, classifier: Served) -> None:
    for seed in (2**64, -1):
        body = {"prompt": PROMPT, "max_tokens": 1, "seed": seed}
        assert (
            assert_error(post(lm.url, "/v1/completions", body, headers=AUTH), 422)["param"]
            == "seed"
        )
    post_ok = post(
        lm.url,
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 1, "seed": 2**63 - 1},
        headers=AUTH,
    )
    assert post_ok.status == 200
    assert_error(post(classifier.url, "/v1/classify", {"input": ""}), 422, "empty")
    assert_error(post(classifier.url, "/v1/classify", {"input": ["fine", "  "]}), 422, "input[1]")


def test_a_large_body_gets_413_not_a_reset(lm: Served) -> None:
    big = b'{"prompt": "' + b"x" * 20_000_000 + b'"}'
    assert_error(post(lm.url, "/v1/completions", None, raw=big, headers=AUTH), 413, "4096 bytes")


@pytest.fixture
def slow(folders: dict[str, Path]) -> Iterator[str]:
    """A server with a queue of 1, a 1 s deadline, a chat default of 3 tokens and a model
    slowed to 0.1 s per token (so a request is reliably in flight while others arrive)."""
    engine = load_engine(folders["causal"])
    real = engine.generate

    def generate(ids: list[int], params: Any, cancelled: Any = lambda: False) -> Iterator[Any]:
        yield from real(ids, params, lambda: time.sleep(0.1) or cancelled())

    engine.generate = generate  # type: ignore[method-assign]
    settings = ServeSettings(
        port=0, max_queue=1, request_timeout=1.0, default_chat_max_tokens=3, max_tokens_cap=64
    )
    with serve_in_thread(engine, settings) as url:
        yield url


def test_full_queue_is_429_with_retry_after_and_deadline_is_504(slow: str) -> None:
    long = {"prompt": PROMPT, "max_tokens": 60, "temperature": 0}
    got: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: got.update(r=post(slow, "/v1/completions", long)))
    worker.start()
    time.sleep(0.4)  # the long request holds the only place now
    busy = post(slow, "/v1/completions", {"prompt": "a", "max_tokens": 1})
    err = assert_error(busy, 429, "--max-queue 1")
    assert busy.headers["retry-after"] == "1" and err["code"] == "rate_limit_exceeded"
    worker.join(30)
    assert assert_error(got["r"], 504, "--request-timeout")["code"] == "timeout"
    chat = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
    r = post(slow, "/v1/chat/completions", chat)  # the place is free again; default max_tokens
    assert r.status == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_prediction_log_truncates_long_inputs(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.jsonl", "m", None)
    log.write("/v1/classify", "id", 0.1, [{"input": "a" * 1_000_000, "output": "pos"}])
    log.close()
    line = (tmp_path / "p.jsonl").read_text()
    rec = json.loads(line)
    assert len(line) < 5000 and rec["output"] == "pos"
    assert rec["input"].startswith("a" * 4000)
    assert rec["input"].endswith("...[truncated: 996000 more characters]")
    assert truncate({"x": ["b" * 5]}, 3) == {"x": ["bbb...[truncated: 2 more characters]"]}
