"""What every request goes through: the body size limit (413), bearer keys (401) and request metrics.

The middlewares are plain ASGI (no HTTP parsing here: uvicorn parses, Starlette gives headers and body).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

try:
    from fastapi import Request
    from fastapi.exceptions import HTTPException
    from starlette.responses import JSONResponse
except ImportError as e:  # pragma: no cover (part of the serve extra)
    from bricks.errors import MissingExtraError

    raise MissingExtraError("the HTTP server needs fastapi and uvicorn: pip install 'brickwork[serve]'") from e

from orchestrator.integrations.server.config import APIError
from orchestrator.integrations.server.metrics import ServerMetrics

__all__ = ["BodyLimit", "RequestMetrics", "bearer_check", "ENDPOINTS"]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
_DRAIN_LIMIT = 64 * 1024 * 1024  # a body over the limit is read and dropped up to this, so the client sees the 413


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large")


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 (by Content-Length at once, else while reading)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= _DRAIN_LIMIT:
                more = True
                while more:
                    message = await receive()
                    more = message["type"] == "http.request" and message.get("more_body", False)
            error = _too_large(self.limit)
            await JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, _too_large(self.limit).message)
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Counts each request by endpoint and status and times it (until the last byte of its response)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/admin" if path.startswith("/admin") else "other")
        status = {"code": 500}
        t0 = time.perf_counter()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - t0)


def bearer_check(key: Callable[[], str | None], what: str) -> Callable:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <key()>` (no key: open)."""

    async def check(request: Request) -> None:
        expected = key()
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, f"You didn't provide an API key: send the {what} as 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            shown = token.strip()[:3] + "..." if len(token.strip()) > 6 else "***"
            raise APIError(401, f"Incorrect {what} provided: {shown}", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check
