"""A server that tries to copy its supervisor's descriptors, as a compromised root server would.

Usage: fd_thief.py PORT

Listens on 127.0.0.1:PORT, then calls pidfd_getfd(2) on its parent (drainer) for descriptors 0
to 64 and prints "theft at start: obtained=N errors=NAME:COUNT,...", then "listening". On SIGTERM
(drainer's release signal, when drainer holds the fewest capabilities) it tries again, prints
"theft at release: ...", and exits 0."""
import ctypes
import errno
import os
import signal
import socket
import sys
import threading
from collections import Counter

SYS_PIDFD_GETFD = 438  # x86_64
libc = ctypes.CDLL(None, use_errno=True)
port = int(sys.argv[1])
parent = os.getppid()


def steal(when):
    obtained, errors = 0, Counter()
    pidfd = os.pidfd_open(parent)
    try:
        for target in range(65):
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
            if fd >= 0:
                obtained += 1
                os.close(fd)
            else:
                errors[errno.errorcode[ctypes.get_errno()]] += 1
    finally:
        os.close(pidfd)
    summary = ",".join(f"{name}:{count}" for name, count in sorted(errors.items()))
    os.write(sys.stdout.fileno(), f"theft at {when}: obtained={obtained} errors={summary}\n".encode())


def released(_signum, _frame):
    steal("release")
    sys.exit(0)


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()
signal.signal(signal.SIGTERM, released)
steal("start")
print("listening", flush=True)


def serve(connection):
    # Open until its client closes, so drainer counts it until then.
    with connection:
        while connection.recv(4096):
            pass


while True:
    threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
