"""Keeps COUNT idle connections open to a Unix socket and to a TCP address, as a local user out to
exhaust a server's descriptors would: none of them ever sends a byte, and one the server answers
or closes is replaced (at most REPLACE_PER_SECOND a second per target), so the pressure lasts.
The answered ones are not closed either (up to COUNT of them per target, the oldest closed
beyond that): a server must not need its client to close before it lets go of a connection.

Usage: idle_flood.py COUNT UNIX_PATH TCP_HOST TCP_PORT

Needs only the standard library: tests run it with the system python3 as an unprivileged user.
Prints "holding COUNT unix COUNT tcp" once COUNT connections to each have been opened (a TCP
connect waits in the kernel while the server's backlog is full; some may have been answered
already: a server that answers faster than REPLACE_PER_SECOND never has COUNT live at once), then
every second "unix open=N connecting=N replaced=N failed=N; tcp ..."."""
import collections
import errno
import os
import resource
import selectors
import socket
import sys
import time

REPLACE_PER_SECOND = 200


def main():
    count = int(sys.argv[1])
    unix_path, tcp_host, tcp_port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    targets = {
        "unix": Target("unix", count, lambda s: s.connect_ex(unix_path), socket.AF_UNIX, selector),
        "tcp": Target("tcp", count, lambda s: s.connect_ex((tcp_host, tcp_port)), socket.AF_INET, selector),
    }
    announced = False
    next_report = time.monotonic() + 1
    while True:
        for target in targets.values():
            target.top_up()
        if not announced and all(t.opened >= count for t in targets.values()):
            print(f"holding {count} unix {count} tcp", flush=True)
            announced = True
        for key, events in selector.select(timeout=0.05):
            targets[key.data[0]].ready(key.fileobj, events)
        if time.monotonic() >= next_report:
            next_report += 1
            print("; ".join(t.report() for t in targets.values()), flush=True)


class Target:
    def __init__(self, name, count, connect, family, selector):
        self.name, self.count, self.connect, self.family = name, count, connect, family
        self.selector = selector
        self.open = set()
        self.connecting = set()
        self.replaced = 0
        self.failed = 0
        # Connections whose connect started without an error, ever.
        self.opened = 0
        # Answered or closed by the server, still open here.
        self.answered = collections.deque()
        # Replacements allowed right now: refilled each second, the first fill unlimited.
        self.allowance = count
        self.refilled_at = time.monotonic()

    def live(self):
        return len(self.open) + len(self.connecting)

    def top_up(self):
        now = time.monotonic()
        if now - self.refilled_at >= 1:
            self.allowance = REPLACE_PER_SECOND
            self.refilled_at = now
        while self.live() < self.count and self.allowance > 0:
            self.allowance -= 1
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = self.connect(sock)
            if code in (0, errno.EINPROGRESS):
                self.opened += 1
            if code == 0:
                self.open.add(sock)
                self.selector.register(sock, selectors.EVENT_READ, (self.name, "open"))
            elif code == errno.EINPROGRESS:
                self.connecting.add(sock)
                self.selector.register(sock, selectors.EVENT_WRITE, (self.name, "connecting"))
            else:
                # EAGAIN: the listener's backlog is full; try again on the next round.
                self.failed += 1
                sock.close()
                break

    def ready(self, sock, events):
        if sock in self.connecting:
            self.connecting.discard(sock)
            self.selector.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self.failed += 1
                sock.close()
                return
            self.open.add(sock)
            self.selector.register(sock, selectors.EVENT_READ, (self.name, "open"))
            return
        # Readable: the server answered or closed. Either way this connection is spent, but it
        # stays open on this side.
        try:
            sock.recv(4096)
        except OSError:
            pass
        self.selector.unregister(sock)
        self.open.discard(sock)
        self.answered.append(sock)
        if len(self.answered) > self.count:
            self.answered.popleft().close()
        self.replaced += 1

    def report(self):
        return (
            f"{self.name} open={len(self.open)} connecting={len(self.connecting)} "
            f"replaced={self.replaced} failed={self.failed}"
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(0)
