"""HTTP clients on persistent connections, as a browser or an API client holds them: each sends
GET PATH in a loop over one keep-alive connection and counts what fails.

Usage: keepalive_clients.py HOST PORT CONNECTIONS PAUSE [PATH]

Each connection sends a request, reads the whole response, waits PAUSE seconds and sends the
next. A request fails if it raises (connection reset or closed, timeout) or answers other than
200; the connection is then opened anew. Prints "ready N" once every connection has had a
request answered, and on SIGTERM stops and prints one JSON report: requests, failures (with the
first few errors and the CLOCK_MONOTONIC time of each), connections opened, and the requests
each backend answered (by the X-Served-By response header, if a load balancer sets it).
"""
import http.client
import json
import signal
import sys
import threading
import time

host, port, connections, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
path = sys.argv[5] if len(sys.argv) > 5 else "/health"

stop = threading.Event()
lock = threading.Lock()
report = {"requests": 0, "failures": 0, "errors": [], "connections_opened": 0, "served_by": {}}
answered_once = threading.Semaphore(0)


def client():
    connection = None
    first = True
    while not stop.is_set():
        if connection is None:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            with lock:
                report["connections_opened"] += 1
        error = None
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                error = f"status {response.status}"
            backend = response.getheader("X-Served-By")
        except (OSError, http.client.HTTPException) as err:
            error = repr(err)
        with lock:
            report["requests"] += 1
            if error is None:
                report["served_by"][backend] = report["served_by"].get(backend, 0) + 1
            else:
                report["failures"] += 1
                if len(report["errors"]) < 20:
                    report["errors"].append({"at": time.clock_gettime(time.CLOCK_MONOTONIC), "error": error})
        if error is not None:
            connection.close()
            connection = None
        elif first:
            first = False
            answered_once.release()
        stop.wait(pause)
    if connection is not None:
        connection.close()


signal.signal(signal.SIGTERM, lambda *_: stop.set())
threads = [threading.Thread(target=client) for _ in range(connections)]
for thread in threads:
    thread.start()
ready = 0
while ready < connections and not stop.is_set():
    ready += answered_once.acquire(timeout=0.1)
if ready == connections:
    print(f"ready {connections}", flush=True)
for thread in threads:
    thread.join()
print(json.dumps(report), flush=True)
