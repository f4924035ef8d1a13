"""A TCP proxy that delays every chunk by a fixed time in each direction, in a child process.

Local servers answer in microseconds, so on this machine a database call costs CPU, not
waiting, and threads and asyncio can only share the same two cores. A real application reaches
its database over a network: ``delay_ms`` each way (0.5 ms: a 1 ms round trip, as between two
hosts in one data centre) makes the benchmark wait as it would there. Order is kept per
direction; the delay is a pipe's, not a bandwidth limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections.abc import Callable


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    await sender


def _serve(listener: socket.socket, host: str, port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, port)
        for w in (client_w, server_w):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay), return_exceptions=True
        )

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start(host: str, port: int, delay_ms: float) -> tuple[int, Callable[[], None]]:
    """Proxy to ``host:port`` on a free local port: (that port, a function that stops it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    local_port = int(listener.getsockname()[1])
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, host, port, delay_ms / 1000), daemon=True
    )
    process.start()
    listener.close()

    def stop() -> None:
        process.terminate()
        process.join()

    return local_port, stop
