"""Static image server for the fetch benchmark: every file of a directory, from memory.

Run as its own process (``python benchmarks/fetch_server.py DIR``) so that serving does not
share the measured fetcher's GIL. Binds 127.0.0.1 only (the project's loopback server,
:func:`mmc4_assets.testing.loopback.start_app`), prints ``PORT <n>`` once listening,
and exits on SIGTERM/SIGINT or when its parent goes away (stdin closes).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

from mmc4_assets.testing.loopback import start_app


async def main(directory: Path) -> None:
    types = {".jpg": "image/jpeg", ".png": "image/png"}
    files = {p.name: (p.read_bytes(), types[p.suffix]) for p in directory.iterdir() if p.suffix in types}

    async def image(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1])

    app = web.Application()
    app.add_routes([web.get("/img/{name}", image)])
    runner, port = await start_app(app, backlog=1024)
    print(f"PORT {port}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1) or stop.set())
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
