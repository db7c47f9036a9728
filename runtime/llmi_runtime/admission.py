"""The runtime's bound on requests at once (LLM_MAX_REQUESTS_PER_MODEL): beyond it a request
gets 429 with Retry-After at once, instead of a place in an unbounded queue in front of the model."""

from __future__ import annotations

from llmi.errors import TooManyRequests
from llmi.web import ASGIApp, Receive, Scope, Send, send_json


class Admission:
    """Counts the model requests in flight; only its middleware changes the count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def middleware(self, app: ASGIApp, paths: frozenset[str]) -> ASGIApp:
        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in paths:
                await app(scope, receive, send)
                return
            if self._in_flight >= self.limit:
                error = TooManyRequests(
                    f"This model is answering {self.limit} requests already (LLM_MAX_REQUESTS_PER_MODEL); "
                    "retry shortly.",
                    retry_after=1,
                    code="too_many_requests",
                )
                await send_json(send, error)
                return
            self._in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                self._in_flight -= 1

        return admit
