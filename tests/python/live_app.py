"""A live-session server in the shape of google/adk-python's /run_live: each WebSocket client
asks for a session length and receives one message every 50 ms (or every `interval` seconds, if
it asks) until it ends, then a normal close (1000). GET /health answers with the server's pid."""
import asyncio
import os

from fastapi import FastAPI, WebSocket

app = FastAPI()

INTERVAL = 0.05


@app.websocket("/run_live")
async def run_live(websocket: WebSocket, seconds: float = 1.0, interval: float = INTERVAL):
    await websocket.accept()
    count = round(seconds / interval)
    for index in range(count):
        await websocket.send_text(f"{index}/{count}")
        await asyncio.sleep(interval)
    await websocket.close(code=1000)


@app.get("/health")
async def health():
    # The process that answered: which generation of a restarted server.
    return {"ok": True, "pid": os.getpid()}
