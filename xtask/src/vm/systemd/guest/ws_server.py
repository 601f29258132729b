#!/usr/bin/python3
"""The server the guest's units and pod run: WebSocket sessions that stream a finite sequence.

`GET /stream?count=N&interval=S` upgrades to a WebSocket and sends the numbers 0..N-1, one every
S seconds, then waits for the client to close. A client that receives all N in order and closes
with 1000 has had the whole session.

On SIGTERM it does what servers do: closes every live session at once (websockets sends 1001,
going away) and exits 0. It logs how many sessions it cut, so a drain that released it too early
shows in its own log as well as in the clients' results.

Written for Debian bookworm's python3-websockets (10.4), the only Python library it needs.
"""
import argparse
import asyncio
import signal
import sys
from urllib.parse import parse_qs, urlsplit

import websockets

live = set()


async def stream(ws, path=None):
    query = parse_qs(urlsplit(ws.path).query)
    count = int(query.get("count", ["1"])[0])
    interval = float(query.get("interval", ["0.5"])[0])
    live.add(ws)
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            await ws.send(str(i))
        await ws.wait_closed()
    finally:
        live.discard(ws)


async def main(host, port):
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(stream, host, port):
        print(f"ws_server: listening on {host}:{port}", flush=True)
        await stop
        print(f"ws_server: SIGTERM: closing {len(live)} live session(s)", flush=True)
    print("ws_server: stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
    sys.exit(0)
