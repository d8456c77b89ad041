"""The request side of `lmtune serve`: settings, the API error, and the Service that owns the
model's single worker thread, the bounded queue (--max-queue), per-request deadlines
(--request-timeout), decoding parameters, non-streamed and streamed generation, and the
prediction log. serve.py wires it to FastAPI routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import StreamingResponse

from lmtune.ops.serve_engine import Engine, GenParams, Piece
from lmtune.ops.serve_metrics import Metrics, PredictionLog
from lmtune.ops.serve_schema import (
    SEED_MAX,
    ChatRequest,
    CompletionRequest,
    error_body,
    sse,
    stream_chunk,
    usage,
)

logger = logging.getLogger("lmtune.serve")
ENDPOINTS = (
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/models/{id}",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/classify",
)
KIND_ENDPOINTS = {
    "causal": "/v1/completions and /v1/chat/completions",
    "classifier": "/v1/classify",
}


@dataclass
class ServeSettings:
    """Server options (the `lmtune serve` flags)."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port (the printed URL shows which)
    api_key: str | None = None  # when set, /v1/* and /metrics need `Authorization: Bearer KEY`
    max_request_bytes: int = 1_000_000
    max_tokens_cap: int = 512  # a request asking for more gets a 400
    max_batch: int = 32  # most inputs (classify) or prompts (completions) in one request
    log_predictions: Path | None = None  # JSON-lines prediction log (opt-in)
    default_max_tokens: int = 16  # /v1/completions without max_tokens, as OpenAI's default
    default_chat_max_tokens: int = 256  # /v1/chat/completions without max_tokens
    max_queue: int = 64  # requests waiting for or using the model; more get a 429
    request_timeout: float = 300.0  # seconds from arrival to the last token; then a 504


class ApiError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


class Service:
    """The model, its single worker thread, and request handling shared by the routes."""

    def __init__(self, engine: Engine, settings: ServeSettings, metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmtune-model")
        self.stopping = threading.Event()  # set at shutdown: running generations end early
        self.pending = 0  # admitted requests not finished yet (only touched on the event loop)
        self.log = (
            PredictionLog(settings.log_predictions, engine.model_id, engine.version)
            if settings.log_predictions
            else None
        )

    def close(self) -> None:
        """Stop generations, wait for the worker, close the prediction log."""
        self.stopping.set()
        self.worker.shutdown(wait=True, cancel_futures=True)
        if self.log is not None:
            self.log.close()

    def admit(self, model: str | None) -> float:
        """Check the model name and take a place in the queue; returns the request's deadline.

        404 for another model's name (as OpenAI); 429 with Retry-After when --max-queue
        requests are already waiting or running. Pair with release().
        """
        if model is not None and model != self.engine.model_id:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server serves "
                f"'{self.engine.model_id}' (GET /v1/models)",
                "model",
                "model_not_found",
            )
        if self.pending >= self.settings.max_queue:
            raise ApiError(
                429,
                f"the server is busy: {self.pending} requests are queued or running "
                f"(lmtune serve --max-queue {self.settings.max_queue}); retry shortly",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        return time.monotonic() + self.settings.request_timeout

    def release(self) -> None:
        """Give back the queue place taken by admit()."""
        self.pending -= 1

    def timed_out(self) -> ApiError:
        """The 504 of a request that passed its deadline."""
        return ApiError(
            504,
            f"the request took longer than this server's limit of "
            f"{self.settings.request_timeout:g} s (lmtune serve --request-timeout); "
            "ask for fewer tokens or retry when the server is less busy",
            code="timeout",
        )

    def require(self, kind: str, endpoint: str) -> None:
        """400 when the loaded model cannot serve endpoint."""
        e = self.engine
        if e.kind != kind:
            raise ApiError(
                400,
                f"{endpoint} needs a {kind} model, but this server runs {e.model_id}, "
                f"a {e.kind} model (task {e.meta['task']}): use {KIND_ENDPOINTS[e.kind]}",
                code="wrong_model_kind",
            )

    def params(
        self, req: CompletionRequest | ChatRequest, n_prompt: int, param: str, default: int | None
    ) -> GenParams:
        """Decoding settings for a prompt of n_prompt tokens, with every limit checked."""
        ctx, cap = self.engine.max_context, self.settings.max_tokens_cap
        if n_prompt == 0:
            raise ApiError(
                400, "the prompt is empty (0 tokens): give the model something to continue", param
            )
        if n_prompt >= ctx:
            raise ApiError(
                400,
                f"the prompt is {n_prompt} tokens, but this model takes at most {ctx} "
                "tokens (prompt + completion): shorten it",
                param,
                "context_length_exceeded",
            )
        asked = req.requested_tokens()
        if asked is not None and asked > cap:
            raise ApiError(
                400,
                f"max_tokens {asked} is above this server's limit of {cap} "
                "(lmtune serve --max-tokens-cap)",
                "max_tokens",
            )
        if asked is not None and n_prompt + asked > ctx:
            raise ApiError(
                400,
                f"the prompt ({n_prompt} tokens) plus max_tokens ({asked}) is more than "
                f"this model's {ctx}-token context: lower max_tokens or shorten the prompt",
                "max_tokens",
                "context_length_exceeded",
            )
        max_tokens = asked if asked is not None else min(default, cap, ctx - n_prompt)
        return GenParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_list(),
            seed=req.seed,
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            logprobs=req.top_logprobs_count(),
        )

    async def pieces(
        self, ids: list[int], params: GenParams, deadline: float
    ) -> AsyncIterator[Piece]:
        """Run one generation on the worker thread and yield its pieces as they come. Leaving
        early (the client went away) cancels the generation at its next token; so does the
        deadline passing (504)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        cancel = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop closed (server stopping)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def stopped() -> bool:
            late = time.monotonic() > deadline
            return cancel.is_set() or self.stopping.is_set() or late

        def work() -> None:
            try:
                for piece in self.engine.generate(ids, params, stopped):
                    put(piece)
            except Exception as exc:  # handed to the request, which answers with an error
                put(exc)
            finally:
                put(done)

        loop.run_in_executor(self.worker, work)
        try:
            while True:
                try:  # waiting for the worker (queued behind others) counts too
                    item = await asyncio.wait_for(queue.get(), deadline - time.monotonic())
                except TimeoutError:
                    raise self.timed_out() from None
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason == "cancelled":
                    if time.monotonic() > deadline:
                        raise self.timed_out()
                    raise ApiError(503, "the server is shutting down; retry", code="shutting_down")
                yield item
        finally:
            cancel.set()

    async def complete(
        self, ids: list[int], params: GenParams, deadline: float
    ) -> tuple[str, str, int, list[dict[str, Any]] | None]:
        """(text, finish_reason, completion tokens, logprob entries or None) of one
        non-streamed generation."""
        text, finish, n = [], "length", 0
        entries: list[dict[str, Any]] | None = [] if params.logprobs is not None else None
        async for piece in self.pieces(ids, params, deadline):
            text.append(piece.text)
            finish, n = piece.finish_reason or finish, piece.completion_tokens
            if entries is not None and piece.logprobs:
                entries += piece.logprobs
        return "".join(text), finish, n, entries

    async def choices(
        self, ids: list[int], params: GenParams, n: int, deadline: float
    ) -> list[tuple[str, str, int, list[dict[str, Any]] | None]]:
        """n completions of one prompt (seed, seed+1, ... when seeded: distinct, reproducible)."""
        out = []
        for i in range(n):
            seed = params.seed + i if params.seed is not None and i else params.seed
            p = GenParams(**{**params.__dict__, "seed": min(seed, SEED_MAX) if seed else seed})
            out.append(await self.complete(ids, p, deadline))
        return out

    async def on_worker(self, deadline: float, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the model's thread (504 when the deadline passes first)."""
        job = asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)
        try:
            return await asyncio.wait_for(job, deadline - time.monotonic())
        except TimeoutError:
            raise self.timed_out() from None

    def record(
        self,
        endpoint: str,
        rid: str,
        start: float,
        records: list[dict[str, Any]],
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count the answered predictions and append them to the prediction log (if on)."""
        self.metrics.add_tokens(prompt_tokens, completion_tokens, len(records))
        if self.log is not None:
            self.log.write(endpoint, rid, time.perf_counter() - start, records)

    def stream(
        self,
        endpoint: str,
        rid: str,
        ids: list[int],
        params: GenParams,
        chat: bool,
        include_usage: bool,
        logged_input: Any,
        deadline: float,
    ) -> StreamingResponse:
        """Server-sent events: one chunk per piece of text, a final chunk with finish_reason,
        optionally a usage chunk, then `data: [DONE]`. An error after the stream has started
        is sent as an error event (the status line has gone already)."""
        model, start = self.engine.model_id, time.perf_counter()

        async def events() -> AsyncIterator[bytes]:
            text, n, finish = [], 0, None
            try:
                if chat:
                    yield sse(stream_chunk(rid, model, True, "", None, first=True))
                # aclosing: if the client goes away mid-stream, the generation is cancelled now,
                # not whenever the abandoned generator happens to be collected.
                async with contextlib.aclosing(self.pieces(ids, params, deadline)) as stream:
                    async for piece in stream:
                        text.append(piece.text)
                        n, finish = piece.completion_tokens, piece.finish_reason
                        if piece.text or piece.logprobs:
                            yield sse(
                                stream_chunk(
                                    rid, model, chat, piece.text, None, logprobs=piece.logprobs
                                )
                            )
                        if finish:
                            yield sse(stream_chunk(rid, model, chat, None, finish))
                if include_usage:
                    yield sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [],
                            "usage": usage(len(ids), n),
                        }
                    )
                self.record(
                    endpoint,
                    rid,
                    start,
                    [
                        {
                            "input": logged_input,
                            "output": "".join(text),
                            "finish_reason": finish,
                            "prompt_tokens": len(ids),
                            "completion_tokens": n,
                        }
                    ],
                    len(ids),
                    n,
                )
            except ApiError as exc:
                yield sse(error_body(exc.message, code=exc.code))
            except Exception as exc:  # a bug: the client gets an error event, the log the traceback
                logger.exception("generation failed in %s %s", endpoint, rid)
                yield sse(
                    error_body(
                        f"internal error ({type(exc).__name__}); see the server log", "server_error"
                    )
                )
            finally:
                release_once()
            yield sse("[DONE]")

        done = [False]

        def release_once() -> None:
            if not done[0]:
                done[0] = True
                self.release()

        return _StreamOnce(
            events(),
            release_once,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


class _StreamOnce(StreamingResponse):
    """A StreamingResponse that runs on_close however it ends: a client that goes away before
    the first chunk never starts the body generator, whose own `finally` would then not
    run, and its queue place would be lost."""

    def __init__(self, content: Any, on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
