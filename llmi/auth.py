"""API keys: who may use the models. Off until keys are configured (LLM_API_KEYS or a file).

Why a pure ASGI middleware: it runs before routing and body parsing, so an unauthorised request
costs neither a parse nor a model load, and it guards every route, present and future, except an
explicit list of open paths (health probes, and metrics when configured). The router's front door
checks ``ApiKeys`` itself before it sends a request straight to a runtime. Keys are compared in
constant time (``hmac.compare_digest`` against each, no early exit) and never logged. Clients send
them as OpenAI's SDK does (``Authorization: Bearer KEY``) or as ``x-api-key``/``api-key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path

from llmi.errors import error_body
from llmi.web import ASGIApp, Receive, Scope, Send

ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})


class KeyError_(ValueError):
    """The key file cannot be read or holds no key."""


def load_keys(inline: str | None, file: Path | None) -> frozenset[str]:
    """Keys from a comma-separated setting and/or a file (one per line, ``#`` comments)."""
    keys = {k.strip() for k in (inline or "").split(",") if k.strip()}
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise KeyError_(f"cannot read the API key file {file}: {exc.strerror}") from None
        keys |= {line.strip() for line in lines if line.strip() and not line.strip().startswith("#")}
        if not keys:
            raise KeyError_(f"the API key file {file} holds no key")
    return frozenset(keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The configured keys, kept as digests of equal length: compare_digest then takes the same
    time whatever the key's length. Empty (false) when access control is off."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.digests = tuple(_digest(k) for k in keys)

    def __bool__(self) -> bool:
        return bool(self.digests)

    def allowed(self, offered: str) -> bool:
        digest = _digest(offered)
        ok = False
        for known in self.digests:  # every key is compared: no early exit to time
            ok |= hmac.compare_digest(digest, known)
        return ok

    def admit(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a request with these headers offers one of the keys."""
        offered = offered_key(headers)
        return offered is not None and self.allowed(offered)


class ApiKeyMiddleware:
    """401 with OpenAI's envelope unless the request carries one of ``keys``."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = ApiKeys(keys)
        self.open = ALWAYS_OPEN | frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope["path"] in self.open:
            await self.app(scope, receive, send)
            return
        offered = offered_key(scope.get("headers", []))
        if offered is not None and self.keys.allowed(offered):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none today; a future one is guarded too (403 before accept)
            await send({"type": "websocket.close", "code": 1008})
            return
        message = "Missing API key: send 'Authorization: Bearer <key>'." if offered is None else "Invalid API key."
        body = json.dumps(error_body(message, "invalid_request_error", code="invalid_api_key")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="llmi"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def offered_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request offers (lower-case header names, as ASGI and the front give them)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name in (b"x-api-key", b"api-key") and value.strip():
            return value.decode("latin-1").strip()
    return None
