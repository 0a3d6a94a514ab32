"""A fake HTTP server for unit tests: an aiohttp app on 127.0.0.1, on a free port, in a
thread of its own (for what cannot run here or must misbehave on purpose: a server that
refuses every request, a gateway that needs a query string)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from aiohttp import web

from labkit.engines.servers import free_port


def serve(routes: list[web.RouteDef]) -> Iterator[str]:
    """An aiohttp app on 127.0.0.1 in a thread of its own; yields its /v1 URL."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # a hanging handler is cancelled, not awaited
    port = free_port()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)

