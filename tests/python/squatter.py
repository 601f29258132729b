"""What any local user can do to abstract unix socket names, done as an unprivileged user.

Usage: squatter.py UID [--bind NAME] [--fill NAME]

Drops to UID (and the group of the same number). --bind listens on the abstract name NAME;
--fill connects to the listener on NAME until its backlog is full, so no one else can connect.
Then prints "squatting pid=PID uid=UID" and holds on until killed."""
import os
import signal
import socket
import sys

uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
held = []
args = sys.argv[2:]
for option, name in zip(args[::2], args[1::2]):
    if option == "--bind":
        # The kernel records the socket's owner when it is created: after the switch, so this
        # user's.
        squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        squatter.bind("\0" + name)
        squatter.listen()
        held.append(squatter)
    elif option == "--fill":
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect("\0" + name)
            except BlockingIOError:
                break
            finally:
                # The connection stays queued on the listener after its client end is closed.
                client.close()
    else:
        sys.exit(f"unknown option {option}")
print(f"squatting pid={os.getpid()} uid={os.getuid()}", flush=True)
signal.pause()
