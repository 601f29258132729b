"""A TCP server that says which process and listener took each connection, then echoes.

Usage: generation_server.py HOST PORT [PORT...] — listens on HOST:PORT for each PORT (HOST
`dual`: on every address, one IPv6 socket that takes IPv4 connections too), prints "listening",
and greets every connection with one line, `pid=PID listener=PORT local=PORT`: the process, the
port its listener is bound to, and the local port of the connection itself. Then it echoes what
it reads until the client closes."""
import asyncio
import os
import socket
import sys


async def main():
    host, ports = sys.argv[1], [int(port) for port in sys.argv[2:]]

    def greeter(port):
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

        return greet_then_echo

    servers = []
    for port in ports:
        if host == "dual":
            # asyncio makes every IPv6 listener v6-only; this one is made by hand.
            sock = socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=4096, dualstack_ipv6=True
            )
            servers.append(await asyncio.start_server(greeter(port), sock=sock))
        else:
            servers.append(
                await asyncio.start_server(greeter(port), host, port, backlog=4096)
            )
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


asyncio.run(main())
