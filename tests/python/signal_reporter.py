"""A process that reports the signals it receives and otherwise does nothing.

Usage: signal_reporter.py

Prints "ready PID", then "got SIGNAME" for each of SIGHUP, SIGUSR1, SIGUSR2, SIGTERM and SIGWINCH
it receives; none of them ends it. SIGWINCH is the tests' barrier: pending signals are handled
lowest number first, so once "got SIGWINCH" is printed, any of the others sent before it has been
reported too."""
import os
import signal


def report(signum, _frame):
    os.write(1, f"got {signal.Signals(signum).name}\n".encode())


for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGWINCH):
    signal.signal(sig, report)

os.write(1, f"ready {os.getpid()}\n".encode())
while True:
    signal.pause()
