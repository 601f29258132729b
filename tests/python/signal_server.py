"""A TCP server that reports the signals it receives.

Usage: signal_server.py PORT [--ignore-term] [--exit-after SECONDS CODE]

Prints "listening", then "got SIGNAME" for each of SIGHUP, SIGUSR1, SIGUSR2 and SIGTERM. On
SIGTERM it exits 0, unless --ignore-term. With --exit-after it exits with CODE on its own. Each
connection is closed when its client closes."""
import os
import signal
import socket
import sys
import threading

port = int(sys.argv[1])
ignore_term = "--ignore-term" in sys.argv


def report(signum, _frame):
    name = signal.Signals(signum).name
    # A raw write, not print: the next signal can arrive while this handler is still inside
    # print, and buffered stdout refuses that reentrant call (RuntimeError).
    os.write(sys.stdout.fileno(), f"got {name}\n".encode())
    if signum == signal.SIGTERM and not ignore_term:
        sys.exit(0)


for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
    signal.signal(sig, report)

if "--exit-after" in sys.argv:
    at = sys.argv.index("--exit-after")
    seconds, code = float(sys.argv[at + 1]), int(sys.argv[at + 2])
    threading.Timer(seconds, lambda: (print("exiting", flush=True), os._exit(code))).start()



def serve(connection):
    with connection:
        while connection.recv(4096):
            pass


listener = socket.create_server(("127.0.0.1", port))
print("listening", flush=True)
while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
