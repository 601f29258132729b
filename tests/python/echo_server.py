"""A TCP echo server that closes each connection when its client does.

Usage: echo_server.py HOST PORT [HOST PORT ...] — listens on every pair, prints "listening"."""
import asyncio
import resource
import sys


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pairs = list(zip(sys.argv[1::2], sys.argv[2::2]))
    servers = [await asyncio.start_server(echo, host, int(port), backlog=4096) for host, port in pairs]
    print("listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
