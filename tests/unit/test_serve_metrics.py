"""Server bookkeeping without a server: percentiles, counters, Prometheus text, the prediction
log, and the ASGI guard (API key, body limit) driven with hand-made ASGI messages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lmtune.ops.serve_http import Guard, authorized, read_body
from lmtune.ops.serve_metrics import Metrics, PredictionLog, percentile, prometheus_text


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50 and percentile(values, 0.9) == 90
    assert percentile(values, 0.99) == 99 and percentile(values, 1.0) == 100
    assert percentile([3.0], 0.5) == 3.0 and percentile([], 0.5) is None


def test_metrics_count_statuses_errors_tokens_and_render_prometheus() -> None:
    m = Metrics()
    for status, secs in ((200, 0.1), (200, 0.3), (400, 0.01), (200, 0.2)):
        m.started_request()
        m.observe("/v1/completions", status, secs)
    m.started_request()
    m.observe("/health", 200, 0.001)
    m.add_tokens(10, 5)
    m.add_tokens(0, 0, predictions=3)
    snap = m.snapshot()
    comp = snap["endpoints"]["/v1/completions"]
    assert (
        comp["requests"] == 4 and comp["errors"] == 1 and comp["by_status"] == {"200": 3, "400": 1}
    )
    assert comp["latency_s"] == {"p50": 0.1, "p90": 0.3, "p99": 0.3}
    assert snap["requests_total"] == 5 and snap["errors_total"] == 1 and snap["in_flight"] == 0
    assert (
        snap["prompt_tokens_total"],
        snap["completion_tokens_total"],
        snap["predictions_total"],
    ) == (10, 5, 4)
    text = prometheus_text(snap)
    assert 'lmtune_requests_total{endpoint="/v1/completions",status="400"} 1' in text
    assert (
        'lmtune_request_latency_seconds{endpoint="/v1/completions",quantile="0.9"} 0.300000' in text
    )
    assert "lmtune_completion_tokens_total 5" in text.splitlines()


def test_prediction_log_appends_one_flushed_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "pred.jsonl"
    log = PredictionLog(path, "tiny", "v3")
    log.write(
        "/v1/classify",
        "clf-1",
        0.0123,
        [{"input": "a", "label": "pos"}, {"input": "b", "label": "neg"}],
    )
    lines = [json.loads(x) for x in path.read_text().splitlines()]  # readable before close: flushed
    assert [x["input"] for x in lines] == ["a", "b"]
    assert (
        lines[0]["model_version"] == "v3"
        and lines[0]["latency_ms"] == 12.3
        and lines[0]["endpoint"] == "/v1/classify"
    )
    log.close()
    again = PredictionLog(path, "tiny", "v3")  # a restarted server appends
    again.write("/v1/completions", "cmpl-2", 0.5, [{"input": "c", "output": "d"}])
    again.close()
    assert len(path.read_text().splitlines()) == 3


def _receive(chunks: list[bytes], then_disconnect: bool = True):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        # A real server's receive() blocks here until the client goes away.
        assert then_disconnect, "read past the end of a complete body"
        return {"type": "http.disconnect"}

    return receive


def test_read_body_limits_declared_and_streamed_sizes() -> None:
    declared = {"headers": [(b"content-length", b"20")]}
    assert asyncio.run(read_body(declared, _receive([b"x" * 20], False), 10)) is None
    chunked = {"headers": [(b"transfer-encoding", b"chunked")]}
    assert asyncio.run(read_body(chunked, _receive([b"x" * 6, b"y" * 6, b"z"], False), 10)) is None
    # Over the limit in the last part: answer at once, never wait for a part that cannot come.
    assert asyncio.run(read_body(chunked, _receive([b"x" * 6, b"y" * 6], False), 10)) is None
    assert asyncio.run(read_body(chunked, _receive([b"x" * 12], False), 10)) is None
    assert asyncio.run(read_body(chunked, _receive([b"ab", b"cd"], False), 10)) == b"abcd"


def test_authorized_needs_the_exact_bearer_key() -> None:
    def scope(value: bytes) -> dict:
        return {"headers": [(b"authorization", value)]}

    assert authorized(scope(b"Bearer s3cret"), "s3cret")
    assert authorized(scope(b"bearer s3cret"), "s3cret")
    assert not authorized(scope(b"Bearer s3cre"), "s3cret")
    assert not authorized(scope(b"Basic s3cret"), "s3cret")
    assert not authorized({"headers": []}, "s3cret")


def test_guard_answers_401_and_413_itself_and_counts_them() -> None:
    called = []

    async def app(scope, receive, send) -> None:
        called.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    metrics = Metrics()
    guard = Guard(app, metrics, ("/health", "/v1/completions"), "key", 8)

    def run(path: str, headers: list, body: bytes) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": path, "headers": headers}
        asyncio.run(guard(scope, _receive([body]), send))
        return sent

    auth = [(b"authorization", b"Bearer key")]
    out = run("/v1/completions", [], b"{}")
    assert (
        out[0]["status"] == 401
        and json.loads(out[1]["body"])["error"]["type"] == "authentication_error"
    )
    assert run("/health", [], b"")[0]["status"] == 204  # open without the key
    out = run("/v1/completions", auth, b"0123456789")
    assert out[0]["status"] == 413 and "8 bytes" in json.loads(out[1]["body"])["error"]["message"]
    assert run("/v1/completions", auth, b"{}")[0]["status"] == 204
    assert called[-1]["body"] == b"{}"  # the app reads the body the guard already read
    assert run("/random/path", auth, b"")[0]["status"] == 204
    snap = metrics.snapshot()
    assert snap["endpoints"]["/v1/completions"]["by_status"] == {"204": 1, "401": 1, "413": 1}
    assert snap["endpoints"]["other"]["requests"] == 1 and snap["in_flight"] == 0
