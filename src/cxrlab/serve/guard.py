"""The service's guards: the access token (checked in constant time, kept out of the access log), the body limit
enforced as bytes arrive, and what counts as serving only this machine."""

from __future__ import annotations

import hmac
import logging
import re

from fastapi import Request
from fastapi.responses import JSONResponse


def authorized(token: str | None, request: Request) -> bool:
    """The request carries the token (Bearer header, or ?token= for the page); compared in constant time."""
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.query_params.get("token", "") if request.url.path == "/" else ""
    return hmac.compare_digest(given.encode(), token.encode())


class BodyLimit:
    """ASGI middleware: the body is read here, up to ``limit`` bytes, before any route sees it; a body over the limit is
    answered 413 as soon as it is known to be, whatever Content-Length says or when there is none (chunked)."""

    def __init__(self, app, limit: int, max_upload_mb: float):
        self.app, self.limit, self.mb = app, limit, max_upload_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        size = int(length) if length.isdigit() else 0
        if size > self.limit:
            return await self._refuse(scope, receive, send, f"upload of {size / 2**20:.1f} MB is over the limit of {self.mb:g} MB")
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(scope, receive, send, f"upload over the limit of {self.mb:g} MB")
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, message: str):
        return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MaskToken(logging.Filter):
    """Uvicorn's access log writes every request's path with its query string, so the page's ``?token=`` link would put
    the token into whatever collects the console: mask it there, as Jupyter Server does."""

    PATTERN = re.compile(r"(?i)(\btoken=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1[hidden]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[hidden]", record.msg)
        return True


def log_config() -> dict:
    """Uvicorn's own logging configuration, with the token masked in both of its handlers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"mask_token": {"()": MaskToken}}
    for handler in config["handlers"].values():
        handler["filters"] = ["mask_token"]
    return config
