"""Which way each request takes through the front door.

Straight to a ready model's runtime (over its Unix socket, where it listens on one) when routing
is all the router has to do: a public POST whose ``model`` is ready now and served by the
transformers engine, with an accepted key. The runtime validates the body itself, as it does
behind the app. Everything else goes to the router app, which checks strictly, loads, queues,
refuses and answers in full; a fast request whose runtime cannot be reached before any byte
falls back there too (the app retries a dead runtime).
"""

from __future__ import annotations

import functools
import time
from urllib.parse import urlsplit

from pydantic import ValidationError

from llmi.auth import ApiKeys
from llmi_router.app import ROUTES, Gateway, RouteFields
from llmi_router.front import Address, Request, Route
from llmi_router.proxy import broken_stream_events

_RUNTIME_HEAD = (
    b"POST %s HTTP/1.1\r\nhost: llmi-runtime\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
)


class GatewayDispatch:
    """The front's ``Dispatch`` for one router app listening on ``app_address``."""

    def __init__(self, gateway: Gateway, app_address: str, keys: ApiKeys) -> None:
        self.gateway = gateway
        self.app_address = app_address
        self.keys = keys
        self.addresses: dict[str, Address] = {}  # a lease's URL, parsed once
        self.slow = Route(app_address)  # the client's own head, built only if it goes there

    def __call__(self, request: Request) -> Route:
        slow = self.slow  # routes are never changed once made: one serves every request
        path = request.path
        if request.method != "POST" or request.version != "1.1" or path not in ROUTES or b"?" in request.target:
            return slow
        if self.keys and not self.keys.admit(request.headers):
            return slow  # the app answers 401
        gateway = self.gateway
        try:
            fields = RouteFields.model_validate_json(request.body)
        except ValidationError:
            return slow
        model, probe = fields.model, gateway.probe
        if model is None or probe is None or gateway.vllm_serves(model) or not gateway.serves(model, path):
            return slow  # the app loads, answers 404 or 400, or maps vLLM's errors
        t0 = time.perf_counter()
        lease = probe.hold_now(model)
        if lease is None:
            return slow  # not ready, or it would have to wait (its concurrency bound): the app does
        head = _RUNTIME_HEAD % (path.encode(), len(request.body))
        return Route(
            lease.socket if lease.socket is not None else self._address(lease.url),
            head,
            lease.release,
            finished=lambda status: gateway.count_known(model, path, status, t0),
            fallback=slow,
            stream_error=functools.partial(broken_stream_events, model) if fields.stream else None,
        )

    def _address(self, url: str) -> Address:
        found = self.addresses.get(url)
        if found is None:
            parts = urlsplit(url)
            found = self.addresses[url] = (parts.hostname or "127.0.0.1", parts.port or 80)
        return found
