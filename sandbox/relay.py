"""A WAN between this machine and the sandbox: a latency relay.

With ``AIR_SANDBOX_RTT_MS=N`` the sandbox (``testbed.set_rtt``) starts this relay on this machine
and has iptables redirect every TCP connection this machine opens to the sandbox's subnet to it
(nat OUTPUT, REDIRECT; the relay's own connections carry a mark and are left alone). The relay
opens each one to its original destination and passes the bytes on both ways, each direction
held back by half the RTT, in order and without limiting throughput: every SSH connection, so
everything air-deploy sends, and the registry's and the balancer's ports alike, see the RTT of a
machine N ms away. Containers talking among themselves do not pass through it.

    python3 -m sandbox.relay --port P --rtt-ms N --stats FILE [--to HOST:PORT]

``--to`` sends every connection there instead of to its original destination (for the relay's own
tests, without iptables). ``--stats`` keeps the connections relayed so far, as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Optional

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h: where a redirected connection was going
MARK = 0x5A1          # on the relay's own connections: the redirect rule skips them
CHUNK = 1 << 16


def original_destination(sock: socket.socket) -> tuple:
    """(address, port) a connection redirected by iptables was opened to."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # a struct sockaddr_in
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


class Relay:
    def __init__(self, rtt_ms: float, stats: Optional[Path] = None, to: Optional[tuple] = None):
        self.delay = rtt_ms / 2000  # seconds, each way
        self.stats, self.to = stats, to
        self.connections = 0

    async def handle(self, client_reader, client_writer) -> None:
        """One connection. As on a WAN, it reaches the destination half an RTT after it was opened,
        and what the client sends leaves only once its connect would have returned (one RTT)."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        self.connections += 1
        self._write_stats()
        where = self.to or original_destination(client_writer.get_extra_info("socket"))
        await asyncio.sleep(self.delay)
        try:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.setblocking(False)
            await loop.sock_connect(upstream, where)
            server_reader, server_writer = await asyncio.open_connection(sock=upstream)
        except OSError:
            client_writer.close()
            return
        client_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self.pipe(client_reader, server_writer, not_before=opened + 2 * self.delay),
                                 self.pipe(server_reader, client_writer))
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    async def pipe(self, reader, writer, not_before: float = 0.0) -> None:
        """Copy ``reader`` to ``writer``, each piece ``delay`` s after it arrived (or after
        ``not_before``), in order; the end of ``reader`` becomes the end of ``writer``'s side."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await pieces.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                await pieces.put((max(loop.time(), not_before) + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, RuntimeError):
            pass  # a side gone: the connection ends (``handle`` closes both)
        finally:
            sender.cancel()

    def _write_stats(self) -> None:
        if self.stats is not None:
            temporary = self.stats.with_suffix(".tmp")
            temporary.write_text(json.dumps({"connections": self.connections, "rtt_ms": self.delay * 2000}))
            os.replace(temporary, self.stats)


async def serve(port: int, relay: Relay) -> None:
    server = await asyncio.start_server(relay.handle, "127.0.0.1", port)
    relay._write_stats()
    async with server:
        await server.serve_forever()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--to", help="HOST:PORT every connection goes to (tests)")
    args = parser.parse_args(argv)
    to = None
    if args.to:
        host, _, port = args.to.rpartition(":")
        to = (host, int(port))
    asyncio.run(serve(args.port, Relay(args.rtt_ms, args.stats, to)))


if __name__ == "__main__":
    main()
