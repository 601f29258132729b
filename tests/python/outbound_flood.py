"""Holds COUNT connections made *from* a guarded port, the kind drainer must keep a record of.

Each socket binds its own loopback address (127.2.0.0 + FIRST + i) with port PORT and connects to
this script's listener on 127.0.0.1:LISTEN_PORT, which never accepts: the kernel completes the
handshakes into the listener's backlog, so only the client side costs a file descriptor.

Usage: outbound_flood.py PORT LISTEN_PORT FIRST COUNT — prints "holding COUNT", then holds the
connections until it is killed."""
import resource
import signal
import socket
import sys


def address(index):
    return f"127.{2 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}"


def main():
    port, listen_port, first, count = map(int, sys.argv[1:])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The kernel caps a listener's backlog at net.core.somaxconn (per namespace): the caller
    # raises it to COUNT + 16.
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=count + 16)
    held = []
    for index in range(first, first + count):
        client = socket.socket()
        client.bind((address(index), port))
        client.connect(("127.0.0.1", listen_port))
        held.append(client)
    print(f"holding {len(held)}", flush=True)
    signal.pause()
    listener.close()


main()
