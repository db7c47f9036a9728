"""The least a Python proxy does: uvicorn (httptools, uvloop where installed, as `llmi serve`
runs) in, aiohttp out, the model read from the body to pick the runtime, nothing else: no
validation, no queue, no metrics, no auth. `bench.router_bench` runs it beside `llmi serve` as
the floor of what any proxy on these libraries costs on this machine.

    python -m bench.floor_proxy PORT MODEL=URL [MODEL=URL ...]
"""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
import uvicorn

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}


class FloorProxy:
    def __init__(self, upstreams: dict[str, str]) -> None:
        self.upstreams = upstreams
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # Idle connections go before the runtime's own keep-alive timeout (uvicorn's 5 s)
                    # closes them: reusing one it is closing fails the request.
                    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
                    self.session = aiohttp.ClientSession(connector=connector)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            upstream = self.upstreams[json.loads(body)["model"]]
        except (ValueError, KeyError, TypeError):  # the readiness probe's bodiless GET, above all
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        assert self.session is not None
        async with self.session.post(
            upstream + scope["path"], data=body, headers={"content-type": "application/json"}
        ) as response:
            headers = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main(argv: list[str]) -> None:
    port, pairs = int(argv[0]), [a.split("=", 1) for a in argv[1:]]
    app = FloorProxy({model: url for model, url in pairs})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="auto", loop="auto")


if __name__ == "__main__":
    main(sys.argv[1:])
