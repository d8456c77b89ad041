"""Shared by the UI tests: a root with finished tiny runs, and the UI served from a thread."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.train.run import run_training
from lmtune.ui.app import UiSettings, create_app
from runkit import (
    config,
    instruction_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[1]


def make_runs(root: Path, models: Path) -> dict[str, Path]:
    """Two finished classifier runs (lr differs) and one finished SFT run under root."""
    bert, llama = tiny_bert_dir(models), tiny_causal_dir(models)
    data = write_jsonl(models / "reviews.jsonl", sentiment_rows(48))
    runs = {}
    for name, lr in (("cls-a", 5e-3), ("cls-b", 1e-2)):
        cfg = config(
            root,
            run={"name": name, "output_dir": str(root / name)},
            task="classification",
            model={"name_or_path": str(bert), "max_length": 32},
            adapter={"type": "full"},
            data={"train": str(data), "split": {"eval": 0.25, "test": 0.25}},
            train={"epochs": 1, "lr": lr},
        )
        run_training(cfg, quiet=True)
        runs[name] = root / name
    sft = write_jsonl(models / "sft.jsonl", instruction_rows(32))
    cfg = config(
        root,
        run={"name": "sft", "output_dir": str(root / "sft")},
        task="sft",
        model={"name_or_path": str(llama), "max_length": 128},
        adapter={"type": "lora", "r": 4, "alpha": 8},
        data={"train": str(sft), "format": "instruction", "split": {"eval": 0.25}},
        train={"epochs": 1},
    )
    run_training(cfg, quiet=True)
    runs["sft"] = root / "sft"
    return runs


@contextlib.contextmanager
def ui_in_thread(root: Path, token: str | None = None) -> Iterator[str]:
    """The UI over root on a free 127.0.0.1 port; yields its base URL."""
    import uvicorn

    from lmtune.ops.serve_http import bind_socket, url_of

    sock = bind_socket("127.0.0.1", 0)
    settings = UiSettings(root=root, token=token, cwd=REPO)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(
    url: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON or text) of one request; POST when a body is given."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    method = "POST" if data is not None else "GET"
    conn.request(
        method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", errors="replace")
    conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text
