"""The one loopback HTTP server of the project: an aiohttp app on 127.0.0.1 at a free port.

Used by the sample's image server (:mod:`mmc4_assets.sample.server`), the fetch tests'
hostile servers and the fetch benchmark's server process. Binding 127.0.0.1 only is the
point: network tests and runs never target any other address.

* :class:`LoopbackServer`: serves on its own thread and event loop, so synchronous code
  (tests, a Dagster resource) can start it, fetch from it and stop it;
* :func:`start_app`: the same, inside an event loop the caller already runs (the
  benchmark serves from its own process so serving does not share the measured GIL).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


async def start_app(
    app: web.Application, *, backlog: int = 128, shutdown_timeout: float = 1.0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 at a port the OS picks: ``(runner, port)``.

    ``await runner.cleanup()`` stops it.
    """
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    # Port 0 lets the OS pick a free port, so parallel test runs never collide.
    await web.TCPSite(runner, HOST, 0, backlog=backlog).start()
    return runner, int(runner.addresses[0][1])


class LoopbackServer:
    """``routes`` (and ``middlewares``) served on 127.0.0.1 from a thread with its own loop.

    A context manager, or :meth:`start` / :meth:`stop` (both idempotent). Subclasses set
    their state, then call ``super().__init__(routes=[...])`` with bound handlers.
    """

    HOST = HOST

    def __init__(
        self,
        routes: Sequence[web.AbstractRouteDef] = (),
        *,
        middlewares: Iterable[Any] = (),
        backlog: int = 128,
        name: str = "loopback-server",
    ) -> None:
        self._routes = list(routes)
        self._middlewares = list(middlewares)
        self._backlog = backlog
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def start(self) -> LoopbackServer:
        if self._runner is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        thread.start()
        try:
            self._runner, self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(5)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        return self

    async def _start(self) -> tuple[web.AppRunner, int]:
        app = web.Application(middlewares=self._middlewares)
        app.add_routes(self._routes)
        return await start_app(app, backlog=self._backlog)

    def stop(self) -> None:
        if self._runner is None or self._loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._runner = self._loop = self._thread = None
            self.port = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self.HOST, self.port

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def url(self, path: str, host: str = HOST) -> str:
        """``http://{host}:{port}{path}``; ``host`` may be a name the test resolves to 127.0.0.1."""
        return f"http://{host}:{self.address[1]}{path}"
