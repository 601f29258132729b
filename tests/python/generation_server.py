"""A TCP server that says which process and listener took each connection, then echoes.

Usage: generation_server.py HOST PORT — listens on HOST:PORT (HOST `dual`: on every address, one
IPv6 socket that takes IPv4 connections too), prints "listening", and greets every connection
with one line, `pid=PID listener=PORT local=PORT`: the process, the port its listener is bound
to, and the local port of the connection itself. Then it echoes what it reads until the client
closes."""
import asyncio
import os
import socket
import sys


async def main():
    host, port = sys.argv[1], int(sys.argv[2])

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

    if host == "dual":
        # asyncio makes every IPv6 listener v6-only; this one is made by hand.
        sock = socket.create_server(
            ("::", port), family=socket.AF_INET6, backlog=4096, dualstack_ipv6=True
        )
        server = await asyncio.start_server(greet_then_echo, sock=sock)
    else:
        server = await asyncio.start_server(greet_then_echo, host, port, backlog=4096)
    print("listening", flush=True)
    await server.serve_forever()


asyncio.run(main())
