"""A slow SMTP server: a TCP proxy that holds back every server reply by a fixed delay.

``python -m bench.slowproxy --listen PORT --upstream PORT --delay 0.04``

What the client sends passes at once; what the server answers reaches the
client DELAY seconds after the proxy read it, in order. It is a delay line,
not a queue: replies that arrive together leave together, so a multi-line
EHLO answer costs one delay, as it would from a distant or busy server. It
runs as its own process so that the benchmark can report its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque

__all__ = ["main", "serve"]

_CHUNK = 65536


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    pending: deque[tuple[float, bytes]] = deque()
    arrived = asyncio.Event()
    done = False

    async def read() -> None:
        nonlocal done
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(_CHUNK):
                pending.append((time.monotonic() + delay, data))
                arrived.set()
        done = True
        arrived.set()

    async def write() -> None:
        while True:
            while not pending:
                if done:
                    return
                arrived.clear()
                await arrived.wait()
            due, data = pending.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    except ConnectionError:
        reading.cancel()
    with contextlib.suppress(OSError):
        writer.close()


async def _handle(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: int,
    delay: float,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        _forward(client_reader, server_writer),
        _delayed(server_reader, client_writer, delay),
        return_exceptions=True,
    )
    server_writer.close()


async def serve(listen: int, upstream: int, delay: float) -> None:
    """Accept on 127.0.0.1:LISTEN and relay to 127.0.0.1:UPSTREAM, replies DELAY seconds late."""
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, upstream, delay), host="127.0.0.1", port=listen, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command-line entry point; runs until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.04)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.upstream, args.delay))


if __name__ == "__main__":
    main()
