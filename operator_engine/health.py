"""The readiness endpoint (READINESS_ENDPOINT, for example `http://0.0.0.0:8081/readyz`).

kopf's own endpoint (`kopf run --liveness=...`) says the process is alive;
it answers on every replica. Readiness says "this replica is the one acting":
200 once this operator reconciles workflows (its handlers are registered and
its watches started, and it has listed the workflows once to take over where
the cluster stands), and, with leader election on, only while it holds the
Lease; 503 otherwise. kopf serves one path on its port, so this is a small
aiohttp server of its own (aiohttp comes with kopf) on a port of its own.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

import aiohttp.web


class Readiness:
    """Whether this replica acts: it reconciles (`mark_ready`) and, with election, leads."""

    def __init__(self, leading: Callable[[], bool] = lambda: True) -> None:
        self._leading = leading
        self._ready = False

    def mark_ready(self) -> None:
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready and self._leading()


def parse_endpoint(url: str) -> tuple[str, int, str]:
    """`http://HOST:PORT/PATH` into its host, port and path (the form of kopf's --liveness)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError("must be http://HOST:PORT/PATH")
    return parts.hostname, parts.port, parts.path or "/"


async def serve(url: str, readiness: Readiness) -> aiohttp.web.AppRunner:
    """Start answering GET PATH on HOST:PORT; the caller stops it with `await runner.cleanup()`."""
    host, port, path = parse_endpoint(url)

    async def answer(_: aiohttp.web.Request) -> aiohttp.web.Response:
        if readiness.ready:
            return aiohttp.web.json_response({"ready": True})
        return aiohttp.web.json_response({"ready": False}, status=503)

    app = aiohttp.web.Application()
    app.router.add_get(path, answer)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
