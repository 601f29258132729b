"""A TCP server that says which process and listener took each connection, then echoes.

Usage: generation_server.py HOST PORT — listens on HOST:PORT (after DELAY seconds, if the
environment's LISTEN_DELAY says so), prints "listening", and greets every connection with one line,
`pid=PID listener=PORT local=PORT`: the process, the port its listener is bound to, and the local
port of the connection itself. Then it echoes what it reads until the client closes."""
import asyncio
import os
import sys


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    await asyncio.sleep(float(os.environ.get("LISTEN_DELAY", "0")))

    async def greet_then_echo(reader, writer):
        local = writer.get_extra_info("sockname")[1]
        writer.write(f"pid={os.getpid()} listener={port} local={local}\n".encode())
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(greet_then_echo, host, port, backlog=4096)
    print("listening", flush=True)
    await server.serve_forever()


asyncio.run(main())
