"""Opens live sessions against /run_live and reports how each ended, one JSON line per session.

Usage: live_clients.py HOST PORT SECONDS [SECONDS ...]

Prints "connected N" once every session is open (the moment a test may stop the server), then a
JSON object per session: requested length, messages expected and received, close code, and the
CLOCK_MONOTONIC time the session ended.
"""
import asyncio
import json
import sys
import time

import websockets


async def session(uri, seconds, opened):
    expected = round(seconds / 0.05)
    received = 0
    code = None
    try:
        async with websockets.connect(f"{uri}?seconds={seconds}", open_timeout=10, ping_interval=None) as ws:
            opened.set_result(None) if not opened.done() else None
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
        "expected": expected,
        "received": received,
        "code": code,
        "ended_at": time.clock_gettime(time.CLOCK_MONOTONIC),
    }


async def main():
    host, port, lengths = sys.argv[1], sys.argv[2], [float(s) for s in sys.argv[3:]]
    uri = f"ws://{host}:{port}/run_live"
    loop = asyncio.get_running_loop()
    opened = [loop.create_future() for _ in lengths]
    tasks = [asyncio.create_task(session(uri, s, o)) for s, o in zip(lengths, opened)]
    await asyncio.gather(*opened, return_exceptions=True)
    print(f"connected {len(lengths)}", flush=True)
    for result in await asyncio.gather(*tasks):
        print(json.dumps(result), flush=True)


asyncio.run(main())
