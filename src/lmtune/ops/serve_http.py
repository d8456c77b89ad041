"""The outermost layer of `lmtune serve`, in plain ASGI: it sees every request, even the ones
it turns away, so /metrics counts 401s and 413s too.

Order matters: the API key is checked before the body is read (an unauthenticated client
cannot make the server buffer anything), then the body is read up to the size limit and
handed on, so the app behind never sees an oversized request.
"""

from __future__ import annotations

import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lmtune.errors import UserError
from lmtune.ops.serve_metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/health",)  # answered without the API key (load balancers, liveness probes)
DRAIN_LIMIT = 128 * 1024 * 1024  # an oversized body up to this size is read and dropped, so
# the client gets its 413 instead of a connection reset while it is still sending


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def authorized(scope: Scope, api_key: str) -> bool:
    """True when the request carries `Authorization: Bearer <api_key>` (constant-time compare)."""
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON response."""
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than limit bytes (declared or sent)."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_LIMIT:
            await _drain(receive, DRAIN_LIMIT)
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the app sees an empty body and nobody reads the answer
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            if more:  # after the last part there is nothing to drain: receive() would wait forever
                await _drain(receive, DRAIN_LIMIT - size)
            return None
        chunks.append(chunk)
        if not more:
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that first returns the already-read body, then the real messages
    (a streaming response listens to them for the client's disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class Guard:
    """ASGI middleware: metrics for every request, API key on all but /health, body size limit."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        endpoints: tuple[str, ...],
        api_key: str | None,
        max_request_bytes: int,
    ) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints
        self.api_key, self.max_request_bytes = api_key, max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (lifespan and others pass straight through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [500]  # stays 500 if the app fails before it starts a response

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        # Imported here, not at the top: its pydantic request models cost `lmtune ui` (which
        # binds its socket through this module) a noticeable part of its start.
        from lmtune.ops.serve_schema import error_body

        start = time.perf_counter()
        self.metrics.started_request()
        try:
            if self.api_key and path not in OPEN_PATHS and not authorized(scope, self.api_key):
                await send_json(
                    tracked,
                    401,
                    error_body(
                        "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            body = await read_body(scope, receive, self.max_request_bytes)
            if body is None:
                await send_json(
                    tracked,
                    413,
                    error_body(
                        f"request body is larger than this server's limit of {self.max_request_bytes} "
                        "bytes (lmtune serve --max-request-bytes)",
                        code="request_too_large",
                    ),
                    [(b"connection", b"close")],
                )
                return
            await self.app(scope, _replay(body, receive), tracked)
        finally:
            label = path if path in self.endpoints else "other"  # unknown paths: one label
            self.metrics.observe(label, status[0], time.perf_counter() - start)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port the OS picks)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port)"
        ) from exc
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT for a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
