#!/usr/bin/python3
"""delayproxy.py - a TCP proxy that adds a network round-trip time.

    delayproxy.py LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT RTT_MS [READY_FILE]

What it models: propagation delay on a path of unlimited bandwidth (the
bandwidth is nginx's limit_rate).  Every chunk read from either side is
written to the other side RTT/2 after it arrived, in order, so a request
and its response cost one RTT more than on loopback and a stream keeps
flowing while later chunks are still "in flight".  A new connection also
pays one RTT for the TCP handshake: what the client sends is held until
RTT after accept, then delayed RTT/2 like the rest (connect, request and
first response byte: 2 RTT, as on a real path).  Not modelled: loss, TCP slow
start and window limits (loopback's windows are large), jitter.
READY_FILE is written once the port listens.
"""
import asyncio
import sys
import time

CHUNK = 65536


async def pump(reader, writer, delay, hold_until):
    """Copy reader to writer, each chunk delayed by `delay` seconds after
    it arrived or after hold_until, whichever is later."""
    queue = asyncio.Queue()

    async def read_side():
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((max(time.monotonic(), hold_until) + delay, data))
            if not data:
                return

    async def write_side():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.ensure_future(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()


async def main():
    port = int(sys.argv[1])
    up_host, up_port = sys.argv[2].rsplit(":", 1)
    rtt = float(sys.argv[3]) / 1000.0

    async def handle(creader, cwriter):
        accepted = time.monotonic()
        try:
            ureader, uwriter = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            cwriter.close()
            return
        try:
            await asyncio.gather(
                pump(creader, uwriter, rtt / 2, accepted + rtt),
                pump(ureader, cwriter, rtt / 2, 0))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (uwriter, cwriter):
                try:
                    w.close()
                except OSError:
                    pass

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    if len(sys.argv) > 4:
        with open(sys.argv[4], "w") as f:
            f.write("ready\n")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
