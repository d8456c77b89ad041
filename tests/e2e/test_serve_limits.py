"""`lmtune serve` as an operator sees it: the API key, request limits and malformed requests,
/health during a generation, concurrent requests, the prediction log, /v1/classify, and the
`lmtune serve` command on a registry (a subprocess that stops cleanly).

Served by the module fixtures of test_serve.py: the same tiny models and servers.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import test_serve as ts
import torch
from test_serve import (
    AUTH,
    KEY,
    PROMPT,
    ROOT,
    Reply,
    Served,
    assert_error,
    call,
    events,
    post,
)

folders, lm, classifier = ts.folders, ts.lm, ts.classifier


def test_api_key_guards_everything_but_health(lm: Served) -> None:
    req = {"prompt": "Hi", "max_tokens": 1}
    assert assert_error(post(lm.url, "/v1/completions", req), 401)["type"] == "authentication_error"
    assert_error(
        post(lm.url, "/v1/completions", req, headers={"Authorization": "Bearer wrong"}), 401
    )
    assert_error(call(lm.url, path="/metrics"), 401)
    assert post(lm.url, "/v1/completions", req, headers=AUTH).status == 200
    health = call(lm.url, path="/health")
    assert (
        health.status == 200
        and health.json()["status"] == "ok"
        and health.json()["kind"] == "causal"
    )
    models = call(lm.url, path="/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["chatbot"]


def test_limits_and_malformed_requests_get_json_errors(lm: Served) -> None:
    u = lm.url
    big = {"prompt": "x" * 5000, "max_tokens": 1}
    assert_error(post(u, "/v1/completions", big, headers=AUTH), 413, "4096 bytes")
    # The same without Content-Length (chunked upload): counted while read.
    host, port = u.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        "/v1/completions",
        body=iter([b'{"prompt": "', b"y" * 3000, b"z" * 3000, b'"}']),
        headers={**AUTH, "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413 and "error" in json.loads(resp.read())
    conn.close()
    assert_error(
        post(u, "/v1/completions", None, raw=b'{"prompt": "a",', headers=AUTH),
        400,
        "not valid JSON",
    )
    assert_error(post(u, "/v1/completions", None, raw=b"", headers=AUTH), 400, "empty")
    assert_error(
        post(u, "/v1/completions", {"prompt": "a"}, headers={**AUTH, "Content-Type": "text/plain"}),
        415,
    )
    for bad, param in (
        ({"prompt": "a", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "temperature": 5}, "temperature"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 2}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ""}, "prompt"),
        ([1, 2], None),
    ):
        assert assert_error(post(u, "/v1/completions", bad, headers=AUTH), 422)["param"] == param
    assert_error(post(u, "/v1/chat/completions", {"messages": []}, headers=AUTH), 422)
    assert_error(
        post(
            u,
            "/v1/chat/completions",
            {"messages": [{"role": "robot", "content": "x"}]},
            headers=AUTH,
        ),
        422,
    )
    assert_error(
        post(
            u,
            "/v1/chat/completions",
            {"messages": [{"role": "assistant", "content": "x"}]},
            headers=AUTH,
        ),
        400,
        "user message",
    )
    assert_error(
        post(u, "/v1/completions", {"prompt": "a", "max_tokens": 65}, headers=AUTH),
        400,
        "limit of 64",
    )
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 40  # > 256 tokens, < 4096 bytes
    err = assert_error(
        post(u, "/v1/completions", {"prompt": long_prompt}, headers=AUTH), 400, "at most 256"
    )
    assert err["code"] == "context_length_exceeded"
    mid_prompt = "The quick brown fox jumps over the lazy dog. " * 11
    assert 256 - 64 < len(lm.ref[1](mid_prompt)["input_ids"]) < 256  # fits, but not with 64 more
    assert_error(
        post(u, "/v1/completions", {"prompt": mid_prompt, "max_tokens": 64}, headers=AUTH),
        400,
        "context",
    )
    assert_error(
        post(u, "/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1}, headers=AUTH),
        400,
        "limit of 4",
    )
    err = assert_error(post(u, "/v1/classify", {"input": "a"}, headers=AUTH), 400, "causal")
    assert err["code"] == "wrong_model_kind"
    assert_error(call(u, path="/v1/nothing-here", headers=AUTH), 404, "/v1/completions")
    assert_error(call(u, path="/v1/completions", headers=AUTH), 405)
    assert call(u, path="/health").status == 200  # none of it hurt the server


def test_health_answers_while_a_generation_runs(lm: Served) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(*_: Any) -> None:  # the first forward of the next generation waits for the test
        if not entered.is_set():
            entered.set()
            release.wait(30)

    handle = lm.engine.model.register_forward_pre_hook(hold)
    result: dict[str, Reply] = {}
    worker = threading.Thread(
        target=lambda: result.update(
            r=post(
                lm.url,
                "/v1/completions",
                {"prompt": PROMPT, "max_tokens": 4, "temperature": 0},
                headers=AUTH,
            )
        )
    )
    try:
        worker.start()
        assert entered.wait(30), "generation did not start"
        t0 = time.perf_counter()
        health = call(lm.url, path="/health", timeout=5)
        metrics = call(lm.url, path="/metrics", headers=AUTH, timeout=5).json()
        assert health.status == 200 and time.perf_counter() - t0 < 5
        assert worker.is_alive() and metrics["in_flight"] >= 2  # the held generation and /metrics
    finally:
        release.set()
        handle.remove()
        worker.join(30)
    assert result["r"].status == 200 and result["r"].json()["usage"]["completion_tokens"] == 4


def test_concurrent_requests_all_succeed_and_are_counted(lm: Served) -> None:
    before = call(lm.url, path="/metrics", headers=AUTH).json()
    lines_before = len(lm.log_lines())
    greedy_req = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    alone = post(lm.url, "/v1/completions", greedy_req, headers=AUTH).json()["choices"][0]["text"]
    jobs = [("/v1/completions", greedy_req)] * 4 + [
        ("/v1/completions", {**greedy_req, "stream": True}),
        (
            "/v1/completions",
            {"prompt": "Tell me a joke.", "max_tokens": 8, "temperature": 0.8, "seed": 1},
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8},
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Why?"}], "max_tokens": 8, "stream": True},
        ),
    ]
    replies: list[Reply | None] = [None] * len(jobs)

    def run(i: int) -> None:
        replies[i] = post(lm.url, jobs[i][0], jobs[i][1], headers=AUTH)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r.status == 200 for r in replies), [r and r.text for r in replies]
    # Requests share one model, one at a time: concurrent greedy answers equal the lone one.
    assert [r.json()["choices"][0]["text"] for r in replies[:4]] == [alone] * 4
    assert "".join(c["choices"][0]["text"] for c in events(replies[4])) == alone
    after = call(lm.url, path="/metrics", headers=AUTH).json()

    def count(snap: dict, endpoint: str) -> int:
        return snap["endpoints"].get(endpoint, {}).get("by_status", {}).get("200", 0)

    assert (
        count(after, "/v1/completions") - count(before, "/v1/completions") == 7
    )  # 6 + the lone one
    assert count(after, "/v1/chat/completions") - count(before, "/v1/chat/completions") == 2
    assert after["predictions_total"] - before["predictions_total"] == 9
    comp = after["endpoints"]["/v1/completions"]
    assert 0 < comp["latency_s"]["p50"] <= comp["latency_s"]["p90"] <= comp["latency_s"]["p99"]
    assert after["completion_tokens_total"] > before["completion_tokens_total"]
    prom = call(lm.url, path="/metrics?format=prometheus", headers=AUTH)
    assert prom.headers["content-type"].startswith("text/plain")
    line = next(
        x
        for x in prom.text.splitlines()
        if x.startswith('lmtune_requests_total{endpoint="/v1/completions",status="200"}')
    )
    assert int(line.split()[-1]) == count(after, "/v1/completions")
    assert len(lm.log_lines()) - lines_before == 9  # one line per prediction


def test_prediction_log_has_one_line_per_prediction(lm: Served) -> None:
    n0 = len(lm.log_lines())
    a = post(
        lm.url,
        "/v1/completions",
        {"prompt": [PROMPT, "Hi"], "max_tokens": 3, "temperature": 0},
        headers=AUTH,
    ).json()
    b = post(
        lm.url,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hey"}], "max_tokens": 3},
        headers=AUTH,
    ).json()
    post(
        lm.url, "/v1/completions", {"prompt": "x", "max_tokens": 999}, headers=AUTH
    )  # refused: not logged
    lines = lm.log_lines()[n0:]
    assert [x["endpoint"] for x in lines] == ["/v1/completions"] * 2 + ["/v1/chat/completions"]
    assert [x["input"] for x in lines[:2]] == [PROMPT, "Hi"]
    assert [x["output"] for x in lines[:2]] == [c["text"] for c in a["choices"]]
    assert lines[2]["input"] == [{"role": "user", "content": "Hey"}]
    assert lines[2]["output"] == b["choices"][0]["message"]["content"]
    assert lines[2]["completion_tokens"] == b["usage"]["completion_tokens"]
    for x in lines:
        assert x["model"] == "chatbot" and x["model_version"] is None and x["latency_ms"] > 0
        assert re.match(r"\d{4}-\d\d-\d\dT", x["time"]) and x["finish_reason"] in ("stop", "length")


def test_classify_labels_scores_and_log(classifier: Served) -> None:
    from lmtune.ops.profile import read_prediction_log

    texts = ["the movie was great", "this book was awful", "our trip was lovely"]
    r = post(classifier.url, "/v1/classify", {"input": texts})
    body = r.json()
    assert r.status == 200 and body["object"] == "classification" and body["model"] == "sentiment"
    model, tok, _ = classifier.ref
    with torch.no_grad():
        probs = model(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for i, row in enumerate(body["data"]):
        assert row["index"] == i and set(row["scores"]) == {"neg", "pos"}
        assert abs(sum(row["scores"].values()) - 1) < 1e-5
        assert row["label"] == max(row["scores"], key=row["scores"].get)
        assert row["confidence"] == row["scores"][row["label"]]
        assert [row["scores"]["neg"], row["scores"]["pos"]] == pytest.approx(
            probs[i].tolist(), abs=1e-5
        )
    single = post(classifier.url, "/v1/classify", {"input": texts[0]}).json()["data"]
    assert len(single) == 1 and single[0]["label"] == body["data"][0]["label"]
    assert_error(post(classifier.url, "/v1/classify", {"input": ["a"] * 5}), 400, "limit of 4")
    assert_error(post(classifier.url, "/v1/classify", {"input": []}), 400, "empty")
    assert_error(post(classifier.url, "/v1/classify", {"input": 5}), 422)
    assert_error(post(classifier.url, "/v1/completions", {"prompt": "a"}), 400, "classifier")
    lines = classifier.log_lines()
    assert len(lines) == 4 and [x["input"] for x in lines[:3]] == texts
    assert [x["label"] for x in lines[:3]] == [d["label"] for d in body["data"]]
    assert lines[0]["scores"] == body["data"][0]["scores"]
    logged, preds, _ = read_prediction_log(
        classifier.log, ["neg", "pos"]
    )  # what `lmtune monitor` reads
    assert logged == [*texts, texts[0]] and preds == [x["label"] for x in lines]


def _lines(stream: Any, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line)


def test_cli_serve_registry_and_stop_cleanly(folders: dict[str, Path], tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    shutil.copytree(folders["clf"], reg / "v2")
    (reg / "current").symlink_to("v2")
    log = tmp_path / "served.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LMTUNE_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmtune",
            "serve",
            str(reg),
            "--port",
            "0",
            "--log-predictions",
            str(log),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    out: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True)
    reader.start()
    try:
        first = out.get(timeout=120)
        match = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        assert match and "registry v2" in first and "classifier" in first, first
        url = match.group(1)
        health = call(url, path="/health").json()
        assert health["version"] == "v2" and health["model"] == "registry"
        assert_error(post(url, "/v1/classify", {"input": "great"}), 401)
        r = post(url, "/v1/classify", {"input": ["great", "awful"]}, headers=AUTH)
        assert r.status == 200 and len(r.json()["data"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    rest = "".join(out.get_nowait() for _ in range(out.qsize()))
    stderr = proc.stderr.read()
    assert "stopped (SIGTERM)" in rest and "Traceback" not in stderr, (rest, stderr)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["model_version"] for x in lines] == ["v2", "v2"]
