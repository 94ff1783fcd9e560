"""The server's outer layer, around every route: the API key (or the admin token) checked in
constant time, the request-body cap (413), one JSON access-log line per request, and the
request metrics; and the OpenAI-shaped error body every refusal carries."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from frozenlm.serve.metrics import Metrics

access_log = logging.getLogger("frozenlm.serve.access")

ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/classify",
    "/health",
    "/metrics",
    "/admin/plugins",
    "/v1/files",
    "/v1/fine_tuning/jobs",
)
"""Paths counted by name in the metrics (anything else counts as "other")."""

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _guard(
    app: ASGIApp,
    api_key: str | None,
    admin_token: str | None,
    max_body_bytes: int,
    metrics: Metrics,
) -> ASGIApp:
    """The outer layer: the API key on every route, the body cap, access logs and metrics."""
    expected = f"Bearer {api_key}".encode() if api_key else None
    admin = f"Bearer {admin_token}".encode() if admin_token else None

    async def guarded(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        headers = dict(scope.get("headers") or [])
        scope.setdefault("state", {})
        try:
            given = headers.get(b"authorization", b"")
            if (
                expected is not None
                and not secrets.compare_digest(given, expected)
                and not (admin is not None and secrets.compare_digest(given, admin))
            ):
                await error_response(401, "a valid API key is needed: Authorization: Bearer <key>")(
                    scope, receive, sending
                )
                return
            body = await _read_body(receive, max_body_bytes, headers)
            if body is None:
                message = f"the request body is larger than {max_body_bytes} bytes"
                await error_response(413, message)(scope, receive, sending)
                return
            await app(scope, _replay(body, receive), sending)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            for prefix in ("/admin/plugins/", "/v1/files/", "/v1/fine_tuning/jobs/"):
                route = prefix[:-1] if path.startswith(prefix) else route
            model = str(scope["state"].get("model", ""))
            seconds = time.perf_counter() - start
            metrics.answered(route, model, status["code"], seconds)
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method"),
                        "path": path,
                        "status": status["code"],
                        "model": model,
                        "ms": round(seconds * 1000, 1),
                        "client": (scope.get("client") or ["", 0])[0],
                    }
                )
            )

    return guarded


async def _read_body(receive: Receive, cap: int, headers: dict[bytes, bytes]) -> bytes | None:
    """The whole request body, or None once it passes `cap` bytes."""
    declared = headers.get(b"content-length", b"0")
    if declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the client's disconnect, as the app expects

    return replay


class Guard:
    """`_guard` as Starlette middleware (outside the routing and error handlers):
    `app.add_middleware(Guard, api_key=..., admin_token=..., max_body_bytes=..., metrics=...)`."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        admin_token: str | None,
        max_body_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._app = _guard(app, api_key, admin_token, max_body_bytes, metrics)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
