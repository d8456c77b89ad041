"""`lmtune serve MODEL_DIR`: a trained model behind an OpenAI-compatible HTTP API.

Causal LMs answer POST /v1/completions and /v1/chat/completions (streamed as server-sent
events or not); classifiers answer POST /v1/classify. Every server has GET /health (always
open), GET /metrics (JSON, or Prometheus text with ?format=prometheus) and GET /v1/models.

Why FastAPI + uvicorn: both are already lmtune dependencies; pydantic (which lmtune's config
uses too) validates requests and turns bad ones into 4xx JSON; StreamingResponse gives
server-sent events; the asyncio event loop keeps /health and /metrics answering while the
model works on its own thread; and uvicorn is a small, production-grade ASGI server with a
graceful shutdown on SIGINT/SIGTERM. The standard library's http.server would need all of
that written by hand; dedicated inference servers (vLLM, TGI) cannot load lmtune's adapter
folders and do not run on a CPU-only laptop.

Concurrency: the model runs on ONE worker thread (a torch model with a KV cache is not safe
for concurrent calls); requests queue for it in arrival order while the event loop, which
only parses, validates, tokenizes and streams, stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmtune.errors import UserError
from lmtune.ops.serve_engine import Engine, GenParams, Piece, load_engine
from lmtune.ops.serve_http import Guard, bind_socket, url_of
from lmtune.ops.serve_metrics import Metrics, PredictionLog, prometheus_text
from lmtune.ops.serve_schema import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    chat_response,
    completion_response,
    error_body,
    new_id,
    sse,
    stream_chunk,
    usage,
)

logger = logging.getLogger("lmtune.serve")
ENDPOINTS = (
    "/health",
    "/metrics",
    "/v1/models",
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


class ApiError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Service:
    """The model, its single worker thread, and request handling shared by the routes."""

    def __init__(self, engine: Engine, settings: ServeSettings, metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmtune-model")
        self.stopping = threading.Event()  # set at shutdown: running generations end early
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
        max_tokens = asked if asked is not None else min(default or cap, cap, ctx - n_prompt)
        return GenParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_list(),
            seed=req.seed,
        )

    async def pieces(self, ids: list[int], params: GenParams) -> AsyncIterator[Piece]:
        """Run one generation on the worker thread and yield its pieces as they come. Leaving
        early (the client went away) cancels the generation at its next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        cancel = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop closed (server stopping)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def stopped() -> bool:
            return cancel.is_set() or self.stopping.is_set()

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
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason == "cancelled":
                    raise ApiError(503, "the server is shutting down; retry", code="shutting_down")
                yield item
        finally:
            cancel.set()

    async def complete(self, ids: list[int], params: GenParams) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of one non-streamed generation."""
        text, finish, n = [], "length", 0
        async for piece in self.pieces(ids, params):
            text.append(piece.text)
            finish, n = piece.finish_reason or finish, piece.completion_tokens
        return "".join(text), finish, n

    async def on_worker(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

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
                async with contextlib.aclosing(self.pieces(ids, params)) as stream:
                    async for piece in stream:
                        text.append(piece.text)
                        n, finish = piece.completion_tokens, piece.finish_reason
                        if piece.text:
                            yield sse(stream_chunk(rid, model, chat, piece.text, None))
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
            yield sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON", None
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return 400, "the request body is empty: send a JSON object", None
    parts, first = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        first = first or (loc[0] if loc else None)  # the request field, as OpenAI's `param`
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
    return 422, "invalid request: " + "; ".join(parts), first


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes an OpenAI-style JSON error, never an HTML page or a traceback."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), exc.status)

    @app.exception_handler(UserError)
    async def _user(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), 400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype:  # FastAPI only parses JSON bodies sent as JSON
            return JSONResponse(
                error_body(
                    f"send the body as JSON with 'Content-Type: application/json' (got {ctype})"
                ),
                415,
            )
        status, message, param = _validation_message(exc)
        return JSONResponse(error_body(message, param=param), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; this server has {', '.join(ENDPOINTS)}"
        return JSONResponse(
            error_body(
                message, "not_found_error" if exc.status_code == 404 else "invalid_request_error"
            ),
            exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(
                f"internal error ({type(exc).__name__}); see the server log", "server_error"
            ),
            500,
        )


def create_app(engine: Engine, settings: ServeSettings, metrics: Metrics | None = None) -> Guard:
    """The ASGI app serving engine: FastAPI routes wrapped in the Guard (key, size, metrics)."""
    metrics = metrics or Metrics()
    svc = Service(engine, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()

    app = FastAPI(
        title="lmtune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.service = svc
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.model_id,
            "version": engine.version,
            "kind": engine.kind,
            "task": engine.meta["task"],
        }

    @app.get("/metrics", response_model=None)
    async def metrics_route(format: str = "json") -> dict[str, Any] | PlainTextResponse:
        snap = metrics.snapshot()
        if format == "prometheus":
            return PlainTextResponse(prometheus_text(snap), media_type="text/plain; version=0.0.4")
        return {"model": engine.model_id, "version": engine.version, **snap}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.model_id,
                    "object": "model",
                    "created": int(metrics.started),
                    "owned_by": "lmtune",
                }
            ],
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        svc.require("causal", "/v1/completions")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) > settings.max_batch:
            raise ApiError(
                400,
                f"{len(prompts)} prompts is more than this server's limit of "
                f"{settings.max_batch} (lmtune serve --max-batch)",
                "prompt",
            )
        if req.stream and len(prompts) != 1:
            raise ApiError(400, "stream takes a single prompt", "prompt")
        encoded = [engine.encode_completion(p) for p in prompts]
        params = [
            svc.params(req, len(ids), "prompt", settings.default_max_tokens) for ids in encoded
        ]
        rid, start = new_id("cmpl"), time.perf_counter()
        if req.stream:
            return svc.stream(
                "/v1/completions",
                rid,
                encoded[0],
                params[0],
                False,
                bool(req.stream_options and req.stream_options.include_usage),
                prompts[0],
            )
        results = [await svc.complete(ids, p) for ids, p in zip(encoded, params, strict=True)]
        n_prompt, n_out = sum(map(len, encoded)), sum(r[2] for r in results)
        svc.record(
            "/v1/completions",
            rid,
            start,
            [
                {
                    "input": p,
                    "output": t,
                    "finish_reason": f,
                    "prompt_tokens": len(ids),
                    "completion_tokens": n,
                }
                for p, ids, (t, f, n) in zip(prompts, encoded, results, strict=True)
            ],
            n_prompt,
            n_out,
        )
        return completion_response(
            rid, engine.model_id, [(t, f) for t, f, _ in results], n_prompt, n_out
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> dict[str, Any] | StreamingResponse:
        svc.require("causal", "/v1/chat/completions")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = engine.encode_chat(messages)
        params = svc.params(req, len(ids), "messages", None)
        rid, start = new_id("chatcmpl"), time.perf_counter()
        if req.stream:
            return svc.stream(
                "/v1/chat/completions",
                rid,
                ids,
                params,
                True,
                bool(req.stream_options and req.stream_options.include_usage),
                messages,
            )
        text, finish, n = await svc.complete(ids, params)
        svc.record(
            "/v1/chat/completions",
            rid,
            start,
            [
                {
                    "input": messages,
                    "output": text,
                    "finish_reason": finish,
                    "prompt_tokens": len(ids),
                    "completion_tokens": n,
                }
            ],
            len(ids),
            n,
        )
        return chat_response(rid, engine.model_id, text, finish, len(ids), n)

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        svc.require("classifier", "/v1/classify")
        items = req.items()
        if not items:
            raise ApiError(400, "input is an empty list", "input")
        if len(items) > settings.max_batch:
            raise ApiError(
                400,
                f"{len(items)} inputs is more than this server's limit of "
                f"{settings.max_batch} (lmtune serve --max-batch)",
                "input",
            )
        rid, start = new_id("clf"), time.perf_counter()
        results = await svc.on_worker(engine.classify, items)
        svc.record(
            "/v1/classify",
            rid,
            start,
            [
                {"input": it if "text_pair" in it else it["text"], "output": r["label"], **r}
                for it, r in zip(items, results, strict=True)
            ],
        )
        return {
            "id": rid,
            "object": "classification",
            "created": int(time.time()),
            "model": engine.model_id,
            "data": [{"index": i, **r} for i, r in enumerate(results)],
        }

    return Guard(app, metrics, ENDPOINTS, settings.api_key, settings.max_request_bytes)


@contextlib.contextmanager
def serve_in_thread(engine: Engine, settings: ServeSettings, timeout: float = 30) -> Iterator[str]:
    """Serve engine from a background thread (a notebook, a test) on settings.host:port;
    yields the URL once the server accepts requests and stops it on exit."""
    import uvicorn

    sock = bind_socket(settings.host, settings.port)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {timeout} s")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[list[int]]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; by then it
    has done its job, so record it instead of dying (exit code 0 after a clean stop)."""
    got: list[int] = []
    previous = {
        s: signal.signal(s, lambda n, _f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_server(model_path: str | Path, settings: ServeSettings) -> None:
    """Load the model, print the URL and serve until SIGINT/SIGTERM (call from the main thread)."""
    import uvicorn

    for name, value in (
        ("--max-request-bytes", settings.max_request_bytes),
        ("--max-tokens-cap", settings.max_tokens_cap),
        ("--max-batch", settings.max_batch),
    ):
        if value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    sock = bind_socket(settings.host, settings.port)  # a taken port fails before a slow load
    try:
        engine = load_engine(model_path)
    except BaseException:
        sock.close()
        raise
    app = create_app(engine, settings)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=10
    )
    url = url_of(sock)
    print(
        f"serving {engine.model_id}{f' {engine.version}' if engine.version else ''} "
        f"({engine.kind}, task {engine.meta['task']}) at {url}",
        flush=True,
    )
    print(
        f"endpoints: {url}/health, {url}/metrics, {KIND_ENDPOINTS[engine.kind]}"
        f"{'; API key required' if settings.api_key else ''}; Ctrl+C stops",
        flush=True,
    )
    if not settings.api_key and not sock.getsockname()[0].startswith(("127.", "::1")):
        print(f"warning: listening on {settings.host} without an API key (--api-key)", flush=True)
    with _signals_end_quietly() as got:
        uvicorn.Server(config).run(sockets=[sock])
    sock.close()
    print(f"stopped{f' ({signal.Signals(got[0]).name})' if got else ''}", flush=True)
