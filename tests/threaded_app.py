"""An aiohttp.web application served on loopback from a thread of its own, for tests whose code under test runs
its own event loop (the load generator, the synchronous control plane)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web


class ThreadedApp:
    """``with ThreadedApp(make_app) as url:``. ``make_app`` runs once, inside the server's own loop, so
    handlers may create loop-bound objects; ``before_exit`` runs in that loop before the server is cleaned up
    (e.g. to release handlers still waiting, which aiohttp keeps running after their client has gone)."""

    def __init__(
        self, make_app: Callable[[], web.Application], *, before_exit: Callable[[], None] | None = None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._make_app = make_app
        self._before_exit = before_exit
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> str:
        self._runner = web.AppRunner(self._make_app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        if self._before_exit is not None:
            self.loop.call_soon_threadsafe(self._before_exit)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
