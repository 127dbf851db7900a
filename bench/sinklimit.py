"""The physical limit of a run's SMTP server: messages/s over reused connections, nothing else in the way.

A minimal client (raw sockets, one asyncio loop, no MIME building, no Redis)
keeps CONNECTIONS sessions open and sends the bench email back to back on each:
MAIL, RCPT and DATA in one write when the server offers PIPELINING (smtp-sink
does), then the body. What it reaches in a few seconds is the most any client
could get out of that server with that many connections: every figure of the
scenario is read against it. On loopback the client's own CPU may be what
limits it, so the figure is a floor of the server's capacity.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.emails import SENDER, email

__all__ = ["SinkLimit", "measure"]


@dataclass(frozen=True)
class SinkLimit:
    """What the limit run measured."""

    connections: int
    pipelining: bool
    seconds: float
    messages: int
    rate: float  # messages / seconds

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return asdict(self)


def _body() -> bytes:
    fields = email(0)
    text = (
        f"From: {SENDER}\r\nTo: {fields['to'][0]}\r\nSubject: {fields['subject']}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + fields["text"].replace("\n", "\r\n")
        + fields["html"]
    )
    return text.encode().replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) reply; its code."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def _session(port: int, stop_at: float, body: bytes, counts: list[int], piped: list[bool]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"EHLO limit.bench\r\n")
        lines = []
        while True:
            line = await reader.readline()
            lines.append(line)
            if line[3:4] != b"-":
                break
        pipelining = any(line[4:].strip().upper() == b"PIPELINING" for line in lines)
        piped.append(pipelining)
        envelope = [f"MAIL FROM:<{SENDER}>\r\n".encode(), b"RCPT TO:<limit@example.com>\r\n", b"DATA\r\n"]
        while time.monotonic() < stop_at:
            if pipelining:
                writer.write(b"".join(envelope))
                codes = [await _reply(reader) for _ in envelope]
            else:
                codes = []
                for command in envelope:
                    writer.write(command)
                    codes.append(await _reply(reader))
            if codes[-1] != 354:
                raise ConnectionError(f"unexpected replies {codes}")
            writer.write(body)
            if await _reply(reader) != 250:
                raise ConnectionError("message refused")
            counts[0] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def _run(port: int, connections: int, seconds: float) -> SinkLimit:
    body = _body()
    counts, piped = [0], []
    started = time.monotonic()
    await asyncio.gather(
        *(_session(port, started + seconds, body, counts, piped) for _ in range(connections))
    )
    elapsed = time.monotonic() - started
    return SinkLimit(
        connections=connections,
        pipelining=all(piped),
        seconds=round(elapsed, 2),
        messages=counts[0],
        rate=round(counts[0] / elapsed, 1),
    )


def measure(port: int, connections: int, seconds: float = 2.0) -> SinkLimit:
    """Send to 127.0.0.1:PORT for SECONDS over CONNECTIONS reused sessions; the rate reached."""
    return asyncio.run(_run(port, connections, seconds))
