"""The `lmtune ui` web app: JSON API + a few pages, all served from the package (no CDN).

Pages are one HTML shell each (pages.py) that static/app.js fills from the JSON API below;
live views read server-sent events that tail metrics.jsonl. The playground loads models
through the same Engine as `lmtune serve`.

Security: the app binds 127.0.0.1 by default; bound elsewhere it requires a token on every
request (printed at start, as Jupyter does); only files under ROOT are served (resolved
paths, symlinks out of ROOT refused); uploads and request bodies are size-limited.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from lmtune.errors import UserError
from lmtune.ui import launch, runs
from lmtune.ui.pages import PAGES, page

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = 20 * 1024 * 1024  # a data file uploaded from the New run page
TEXT_SUFFIXES = {".md", ".yaml", ".yml", ".json", ".jsonl", ".txt", ".csv", ".tsv", ".log"}


@dataclass
class UiSettings:
    """`lmtune ui` options."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None  # required on every request when set
    cwd: Path = field(default_factory=Path.cwd)  # where launched runs start (relative paths)


class Playground:
    """Engines loaded on first use, one at a time, shared by the chat and classify boxes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.path: Path | None = None
        self.engine: Any = None

    def get(self, model_dir: Path) -> Any:
        """The serve Engine for model_dir (loads it, replacing the previous one)."""
        from lmtune.ops.serve_engine import load_engine

        with self.lock:
            if self.path != model_dir:
                self.engine, self.path = load_engine(model_dir), model_dir
            return self.engine


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: UiSettings) -> FastAPI:
    """The UI over settings.root."""
    root = settings.root.resolve()
    app = FastAPI(title="lmtune ui", docs_url=None, redoc_url=None, openapi_url=None)
    playground = Playground()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if settings.token and not _token_ok(request, settings.token):
            return _error(401, "this UI needs its token: open the URL printed at start")
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_UPLOAD:
            return _error(413, f"request body over {MAX_UPLOAD // 2**20} MiB")
        try:
            return await call_next(request)
        except UserError as exc:
            return _error(400, str(exc))

    @app.get("/static/{name}")
    def static(name: str) -> Any:
        path = (STATIC / name).resolve()
        if path.parent != STATIC or not path.is_file():
            return _error(404, "no such asset")
        return FileResponse(path)

    for name in PAGES:
        _add_page(app, name, settings)
    _add_run_api(app, root, settings)
    _add_launch_api(app, root, settings)
    _add_ops_api(app, root, playground)
    return app


def _token_ok(request: Request, token: str) -> bool:
    given = request.query_params.get("token") or request.cookies.get("lmtune_ui_token") or ""
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        given = auth[7:]
    return hmac.compare_digest(given.encode(), token.encode())


def _add_page(app: FastAPI, name: str, settings: UiSettings) -> None:
    path = "/" if name == "runs" else f"/{name}"

    @app.get(path, response_class=HTMLResponse, name=f"page_{name}")
    def show(request: Request) -> HTMLResponse:
        response = HTMLResponse(page(name))
        if settings.token and request.query_params.get("token"):
            # The token from the printed URL becomes a cookie so the page's own calls carry it.
            response.set_cookie("lmtune_ui_token", settings.token, httponly=True, samesite="strict")
        return response


def _add_run_api(app: FastAPI, root: Path, settings: UiSettings) -> None:
    @app.get("/api/runs")
    def list_runs() -> list[dict[str, Any]]:
        return [runs.run_row(root, d) for d in runs.find_runs(root)]

    @app.get("/api/run")
    def run_detail(name: str) -> dict[str, Any]:
        run_dir = _run_dir(root, name)
        summary = runs.read_json(run_dir / "summary.json")
        files = {
            f: (run_dir / f).is_file()
            for f in ("report.html", "MODEL_CARD.md", "data_report.md", "rejects.jsonl")
        }
        return {
            "row": runs.run_row(root, run_dir),
            "config": _read_text(run_dir / runs.RUN_MARKER),
            "summary": summary,
            "eval": runs.read_json(run_dir / "eval.json"),
            "errors": runs.read_jsonl(run_dir / "errors.jsonl"),
            # Causal runs: held-out prompts answered before and after training (as report.html).
            "samples": runs.read_json(run_dir / "samples.json"),
            "rejects": runs.read_jsonl(run_dir / "rejects.jsonl", limit=100),
            "files": files,
            "log": _log_tail(root, run_dir.name),
        }

    @app.get("/api/events")
    def events(name: str, since: int = 0) -> dict[str, Any]:
        found, offset = runs.read_events(_run_dir(root, name), since)
        return {"events": found, "offset": offset}

    @app.get("/api/stream")
    async def stream(name: str, request: Request) -> StreamingResponse:
        run_dir = _run_dir(root, name)
        return StreamingResponse(_tail(run_dir, root, request), media_type="text/event-stream")

    @app.get("/api/compare")
    def compare(names: str) -> dict[str, Any]:
        chosen = [n for n in names.split(",") if n][:5]
        if len(chosen) < 2:
            raise UserError("compare needs 2 to 5 runs")
        dirs = {n: _run_dir(root, n) for n in chosen}
        return {
            "diff": runs.config_diff({n: runs.read_config(d) for n, d in dirs.items()}),
            "events": {n: runs.read_events(d)[0] for n, d in dirs.items()},
            "summaries": {n: runs.read_json(d / "summary.json") for n, d in dirs.items()},
        }

    @app.get("/files/{rel:path}")
    def files(rel: str) -> Any:
        path = runs.safe_path(root, rel)
        if not path.is_file():
            return _error(404, f"{rel} is not a file under the UI root")
        if path.suffix in TEXT_SUFFIXES:
            return FileResponse(path, media_type="text/plain; charset=utf-8")
        return FileResponse(path)


def _run_dir(root: Path, name: str) -> Path:
    run_dir = runs.safe_path(root, name)
    # A run launched from the UI has a page before its process wrote config.yaml.
    if not (run_dir / runs.RUN_MARKER).is_file() and not runs.launch_record(root, name):
        raise UserError(f"{name} is not a run folder under {root}")
    return run_dir


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _log_tail(root: Path, name: str, limit: int = 8000) -> str:
    """The end of a UI-launched run's console log (where a failed run says why)."""
    path = root / runs.UI_DIR / f"{name}.log"
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


async def _tail(run_dir: Path, root: Path, request: Request) -> AsyncIterator[str]:
    """Server-sent events: every metrics.jsonl event as it is written, and the run's status."""
    offset, status = 0, None
    while not await request.is_disconnected():
        found, offset = runs.read_events(run_dir, offset)
        for event in found:
            yield f"data: {json.dumps(event)}\n\n"
        now = runs.run_status(root, run_dir, runs.read_json(run_dir / "summary.json"))
        if now != status:
            status = now
            yield f"event: status\ndata: {json.dumps(status)}\n\n"
        await asyncio.sleep(0.5)


def _add_launch_api(app: FastAPI, root: Path, settings: UiSettings) -> None:
    @app.get("/api/configs")
    def configs() -> dict[str, str]:
        return launch.shipped_configs(settings.cwd)

    @app.get("/api/datafiles")
    def datafiles() -> list[str]:
        suffixes = {".jsonl", ".json", ".csv", ".tsv"}
        found = [p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()]
        keep = [p for p in found if runs.UI_DIR not in p.parts or "uploads" in p.parts]
        return sorted(str(p.relative_to(root)) for p in keep)[:500]

    @app.post("/api/validate")
    async def validate(request: Request) -> dict[str, Any]:
        body = await request.json()
        cfg, problems = launch.validate_yaml(body.get("yaml", ""), body.get("overrides") or [])
        return {"ok": cfg is not None, "problems": problems}

    @app.post("/api/plan")
    async def plan(request: Request) -> dict[str, Any]:
        body = await request.json()
        lines = await asyncio.to_thread(
            launch.plan_lines, body.get("yaml", ""), body.get("overrides") or []
        )
        return {"lines": lines}

    @app.post("/api/launch")
    async def start(request: Request) -> dict[str, Any]:
        body = await request.json()
        return launch.launch_run(
            root, body.get("yaml", ""), body.get("overrides") or [], settings.cwd
        )

    @app.post("/api/upload")
    async def upload(request: Request, filename: str) -> dict[str, str]:
        safe = Path(filename).name
        if not launch.NAME_RE.match(safe) or Path(safe).suffix not in {".jsonl", ".csv", ".tsv"}:
            raise UserError("upload a .jsonl, .csv or .tsv file with a plain name")
        data = await request.body()
        if len(data) > MAX_UPLOAD:
            return _error(413, "file too large")  # type: ignore[return-value]
        folder = root / runs.UI_DIR / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / safe).write_bytes(data)
        return {"path": str((folder / safe).relative_to(root))}

    @app.post("/api/action")
    async def action(request: Request) -> dict[str, Any]:
        body = await request.json()
        name, what = str(body.get("name", "")), body.get("action")
        if what == "stop":
            return {"pid": launch.stop_run(root, name)}
        if what == "resume":
            return launch.resume_run(root, name, settings.cwd)
        if what in ("eval", "export"):
            extra = [body["data"]] if body.get("data") else []
            return launch.start_command(root, name, what, extra, settings.cwd)
        raise UserError(f"unknown action {what!r}")


def _add_ops_api(app: FastAPI, root: Path, playground: Playground) -> None:
    from lmtune.ui import ops

    @app.get("/api/registries")
    def registries() -> list[dict[str, Any]]:
        return [ops.registry_view(root, r) for r in runs.find_registries(root)]

    @app.post("/api/registry")
    async def registry_action(request: Request) -> dict[str, Any]:
        body = await request.json()
        return ops.registry_action(root, body)

    @app.get("/api/monitors")
    def monitors() -> list[dict[str, Any]]:
        return [ops.monitor_view(root, db) for db in runs.find_monitors(root)]

    @app.get("/api/models")
    def models() -> list[dict[str, Any]]:
        return ops.playground_models(root)

    @app.post("/api/chat")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        engine = await asyncio.to_thread(
            playground.get, ops.model_path(root, body.get("model", ""))
        )
        ids, params = ops.chat_params(engine, body)
        return StreamingResponse(
            ops.chat_stream(engine, ids, params), media_type="text/event-stream"
        )

    @app.post("/api/classify")
    async def classify(request: Request) -> dict[str, Any]:
        body = await request.json()
        engine = await asyncio.to_thread(
            playground.get, ops.model_path(root, body.get("model", ""))
        )
        return await asyncio.to_thread(ops.classify, engine, body)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui_token(host: str, token: str | None) -> str | None:
    """The token the UI requires: the one given, else a new one when bound beyond loopback."""
    if token or host in LOOPBACK:
        return token
    import secrets

    return secrets.token_urlsafe(24)


def run_ui(settings: UiSettings) -> None:
    """Serve the UI until Ctrl-C; prints the URL (with the token when one is required)."""
    import uvicorn

    from lmtune.ops.serve_http import bind_socket, url_of

    if not settings.root.is_dir():
        raise UserError(f"{settings.root} is not a folder (give the folder that holds your runs)")
    settings.token = ui_token(settings.host, settings.token)
    sock = bind_socket(settings.host, settings.port)
    url = url_of(sock) + (f"/?token={settings.token}" if settings.token else "/")
    print(f"lmtune ui over {settings.root.resolve()}: {url}", flush=True)
    # ws="none": the UI streams over server-sent events; no websocket library to import.
    config = uvicorn.Config(
        create_app(settings), log_level="warning", timeout_graceful_shutdown=2, ws="none"
    )
    uvicorn.Server(config).run(sockets=[sock])
