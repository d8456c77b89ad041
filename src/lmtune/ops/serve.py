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
only parses, validates, tokenizes and streams, stays responsive. The queue is bounded
(--max-queue: a request beyond it gets 429 with Retry-After at once instead of waiting
minutes) and every request has a deadline (--request-timeout: 504 when it passes, and its
generation stops at the next token).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmtune.errors import UserError
from lmtune.ops.serve_engine import Engine, load_engine
from lmtune.ops.serve_http import Guard, bind_socket, url_of
from lmtune.ops.serve_metrics import Metrics, prometheus_text
from lmtune.ops.serve_schema import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    chat_logprobs,
    chat_response,
    completion_logprobs,
    completion_response,
    error_body,
    new_id,
)
from lmtune.ops.serve_service import (
    ENDPOINTS,
    KIND_ENDPOINTS,
    ApiError,
    ServeSettings,
    Service,
)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON", None
    extra = [e for e in errors if e.get("type") == "extra_forbidden"]
    if extra:  # a field we do not implement: say so rather than answer as if it was applied
        names = [".".join(str(x) for x in e.get("loc", ()) if x != "body") for e in extra]
        return (
            400,
            f"{', '.join(names)}: not supported by lmtune serve (it implements the sampling "
            "fields, stop, seed, n, logprobs and frequency/presence penalties); remove "
            f"{'it' if len(names) == 1 else 'them'} from the request",
            names[0],
        )
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
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(exc.message, kind, param=exc.param, code=exc.code),
            exc.status,
            headers=exc.headers,
        )

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

    def model_card() -> dict[str, Any]:
        return {
            "id": engine.model_id,
            "object": "model",
            "created": int(metrics.started),
            "owned_by": "lmtune",
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist; this server serves '{engine.model_id}'",
                "model",
                "model_not_found",
            )
        return model_card()

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        svc.require("causal", "/v1/completions")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) * req.n > settings.max_batch:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n={req.n} is more than this server's limit of "
                f"{settings.max_batch} (lmtune serve --max-batch)",
                "prompt",
            )
        if req.stream and (len(prompts) != 1 or req.n != 1):
            raise ApiError(400, "stream takes a single prompt and n=1", "stream")
        encoded = [engine.encode_completion(p) for p in prompts]
        params = [
            svc.params(req, len(ids), "prompt", settings.default_max_tokens) for ids in encoded
        ]
        deadline = svc.admit(req.model)
        rid, start = new_id("cmpl"), time.perf_counter()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            first = (encoded[0], params[0], False, include_usage, prompts[0], deadline)
            return svc.stream("/v1/completions", rid, *first)
        try:
            results = []
            for ids, p in zip(encoded, params, strict=True):
                results += await svc.choices(ids, p, req.n, deadline)
        finally:
            svc.release()
        n_prompt, n_out = sum(map(len, encoded)) * req.n, sum(r[2] for r in results)
        inputs = [(p, ids) for p, ids in zip(prompts, encoded, strict=True) for _ in range(req.n)]
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
                for (p, ids), (t, f, n, _) in zip(inputs, results, strict=True)
            ],
            n_prompt,
            n_out,
        )
        logprobs = (
            [completion_logprobs(r[3]) for r in results] if req.logprobs is not None else None
        )
        return completion_response(
            rid, engine.model_id, [(t, f) for t, f, _, _ in results], n_prompt, n_out, logprobs
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> dict[str, Any] | StreamingResponse:
        svc.require("causal", "/v1/chat/completions")
        if req.n > settings.max_batch:
            raise ApiError(
                400, f"n={req.n} is more than this server's limit of {settings.max_batch}", "n"
            )
        if req.stream and req.n != 1:
            raise ApiError(400, "stream takes n=1", "stream")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = engine.encode_chat(messages)
        params = svc.params(req, len(ids), "messages", settings.default_chat_max_tokens)
        deadline = svc.admit(req.model)
        rid, start = new_id("chatcmpl"), time.perf_counter()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return svc.stream(
                "/v1/chat/completions", rid, ids, params, True, include_usage, messages, deadline
            )
        try:
            results = await svc.choices(ids, params, req.n, deadline)
        finally:
            svc.release()
        n_out = sum(r[2] for r in results)
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
                for text, finish, n, _ in results
            ],
            len(ids) * req.n,
            n_out,
        )
        logprobs = [chat_logprobs(r[3] or []) for r in results] if req.logprobs else None
        return chat_response(
            rid,
            engine.model_id,
            [(t, f) for t, f, _, _ in results],
            len(ids) * req.n,
            n_out,
            logprobs,
        )

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
        deadline = svc.admit(req.model)
        rid, start = new_id("clf"), time.perf_counter()
        try:
            results = await svc.on_worker(deadline, engine.classify, items)
        finally:
            svc.release()
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
        ("--max-queue", settings.max_queue),
        ("--default-max-tokens", settings.default_chat_max_tokens),
    ):
        if value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    if settings.request_timeout <= 0:
        raise UserError(
            f"--request-timeout must be above 0 seconds (got {settings.request_timeout})"
        )
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
