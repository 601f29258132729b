"""Opens live sessions against /run_live and reports how each ended, one JSON line per session.

Usage: live_clients.py HOST PORT SECONDS[:INTERVAL] [SECONDS[:INTERVAL] ...]

A session asks for SECONDS of messages, one every INTERVAL seconds (the app's 50 ms if not
given). Prints "local ports P ..." (each session's own port, in argument order) and "connected N"
once every session is open (the moment a test may stop the server), then a JSON object per
session: requested length and interval, messages expected and received, close code, the
X-Served-By header of the upgrade response (a load balancer's name for the backend, if it sets
one), the session's local port, and the CLOCK_MONOTONIC time the session ended.
"""
import asyncio
import json
import sys
import time

import websockets

INTERVAL = 0.05


async def session(uri, seconds, interval, opened):
    expected = round(seconds / interval)
    received = 0
    code = None
    served_by = None
    local_port = None
    query = f"seconds={seconds}" + (f"&interval={interval}" if interval != INTERVAL else "")
    try:
        async with websockets.connect(f"{uri}?{query}", open_timeout=10, ping_interval=None) as ws:
            served_by = ws.response.headers.get("X-Served-By")
            local_port = ws.local_address[1]
            opened.set_result(local_port) if not opened.done() else None
            try:
                async for _ in ws:
                    received += 1
            except websockets.ConnectionClosed:
                pass
            code = ws.close_code
    except Exception as err:  # the session never opened: report it rather than hang the test
        if not opened.done():
            opened.set_exception(err)
        code = f"error: {err!r}"
    return {
        "seconds": seconds,
        "interval": interval,
        "expected": expected,
        "received": received,
        "code": code,
        "served_by": served_by,
        "local_port": local_port,
        "ended_at": time.clock_gettime(time.CLOCK_MONOTONIC),
    }


def parse(spec):
    seconds, _, interval = spec.partition(":")
    return float(seconds), float(interval) if interval else INTERVAL


async def main():
    host, port, specs = sys.argv[1], sys.argv[2], [parse(s) for s in sys.argv[3:]]
    uri = f"ws://{host}:{port}/run_live"
    loop = asyncio.get_running_loop()
    opened = [loop.create_future() for _ in specs]
    tasks = [asyncio.create_task(session(uri, s, i, o)) for (s, i), o in zip(specs, opened)]
    ports = await asyncio.gather(*opened, return_exceptions=True)
    print("local ports " + " ".join(str(p) for p in ports if isinstance(p, int)), flush=True)
    print(f"connected {len(specs)}", flush=True)
    for result in await asyncio.gather(*tasks):
        print(json.dumps(result), flush=True)


asyncio.run(main())
