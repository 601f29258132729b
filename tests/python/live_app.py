"""A live-session server in the shape of google/adk-python's /run_live: each WebSocket client
asks for a session length and receives one message every 50 ms until it ends, then a normal
close (1000)."""
import asyncio

from fastapi import FastAPI, WebSocket

app = FastAPI()

INTERVAL = 0.05


@app.websocket("/run_live")
async def run_live(websocket: WebSocket, seconds: float = 1.0):
    await websocket.accept()
    count = round(seconds / INTERVAL)
    for index in range(count):
        await websocket.send_text(f"{index}/{count}")
        await asyncio.sleep(INTERVAL)
    await websocket.close(code=1000)


@app.get("/health")
async def health():
    return {"ok": True}
