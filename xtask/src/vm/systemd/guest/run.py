#!/usr/bin/python3
"""The scenarios of `cargo xtask vm-deploy`, run inside the guest by drainer-vm-run.service.

The host shares a directory at /srv/vm holding this script, `plan.json` (which scenarios, how
long each holds its sessions), the repository's deploy/kubernetes and drainer's artifacts; this script
installs drainer, plays each scenario against real systemd (and podman), prints every check and
its evidence on the console, writes `results/results.json` and the journal to the share, and
powers the guest off. The host reads the results back: a scenario passes only if every check in
it passed.

Timing: every wait here is bounded by a budget scaled from how long this guest took to boot
(`plan["budget_boots"]` times the uptime when this script starts), so a slower machine gets
longer, never a fixed deadline tuned to pass. The sessions' lengths are the scenario's
parameters, not waits.
"""
import asyncio
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback

import websockets

SHARE = "/srv/vm"
RESULTS = os.path.join(SHARE, "results")
PORT = 8000
UNITS = "/etc/systemd/system"


def say(message):
    print(f"vm-deploy: {message}", flush=True)


class Checks:
    """The checks of every scenario, in order: what was asserted, whether it held, the evidence."""

    def __init__(self):
        self.scenarios = []

    def start(self, name):
        say(f"scenario {name}")
        self.scenarios.append({"name": name, "checks": [], "evidence": [], "error": None})

    def check(self, name, ok, detail):
        ok = bool(ok)
        self.scenarios[-1]["checks"].append({"name": name, "ok": ok, "detail": detail})
        say(f"  {'ok    ' if ok else 'FAILED'} {name}: {detail}")
        return ok

    def evidence(self, title, lines):
        self.scenarios[-1]["evidence"].append({"title": title, "lines": lines})
        say(f"  evidence: {title}")
        for line in lines:
            say(f"    | {line}")

    def error(self, text):
        self.scenarios[-1]["error"] = text
        say(f"  ERROR {text}")

    def write(self):
        with open(os.path.join(RESULTS, "results.json"), "w") as out:
            json.dump({"scenarios": self.scenarios}, out, indent=1)


def sh(*args, check=True, timeout=None, **kw):
    """Runs a command, returns its stdout; a failure names the command and its stderr."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()} {done.stdout.strip()}"
        )
    return done.stdout


def prop(unit, name):
    return sh("systemctl", "show", "--value", "-p", name, unit).strip()


def journal(unit, since):
    """The unit's journal lines since `since` (a `journalctl --since` timestamp), PID 1's about it
    included."""
    return sh("journalctl", "-u", unit, "--since", since, "-o", "short-precise", "--no-pager").splitlines()


def now_stamp():
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 1))


def wait_until(what, predicate, budget):
    """Polls `predicate` until it returns something true, for at most `budget` seconds."""
    deadline = time.monotonic() + budget
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {budget:.0f} s")
        time.sleep(0.2)


def port_accepts(host="127.0.0.1", port=PORT):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def connect_outcome(host="127.0.0.1", port=PORT):
    """What a new TCP connection gets: 'accepted', 'refused' (a reset) or the error."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        return f"{type(err).__name__}: {err}"


class Session:
    """One WebSocket session: `count` messages, one every `interval` seconds, then the client
    closes it (1000)."""

    def __init__(self, length, interval=0.5):
        self.count = max(2, round(length / interval))
        self.interval = interval
        self.received = []
        self.opened = asyncio.Event()
        self.open = False
        self.closed_at = None
        self.close_code = None
        self.error = None

    async def run(self, host, port):
        uri = f"ws://{host}:{port}/stream?count={self.count}&interval={self.interval}"
        try:
            async with websockets.connect(uri, open_timeout=None, ping_interval=None) as ws:
                self.open = True
                self.opened.set()
                while len(self.received) < self.count:
                    self.received.append(await ws.recv())
                await ws.close(1000)
                self.close_code = ws.close_code
        except Exception as err:  # noqa: BLE001 - every way a session ends is a result
            self.error = f"{type(err).__name__}: {err}"
            self.opened.set()
        finally:
            self.open = False
            self.closed_at = time.monotonic()

    def whole(self):
        return (
            self.error is None
            and self.received == [str(i) for i in range(self.count)]
            and self.close_code == 1000
        )

    def describe(self):
        what = f"{len(self.received)}/{self.count} messages, close {self.close_code}"
        return what + (f", {self.error}" if self.error else "")


def status_text(unit):
    """The live count as systemd shows it: the unit's StatusText."""
    return lambda: prop(unit, "StatusText")


async def drain_while_held(c, stop_command, status, status_name, lengths, host="127.0.0.1",
                           port=PORT, budget=60, accept_for=0):
    """Opens sessions of `lengths` seconds, runs `stop_command` once all are live, and while it
    runs samples `status()` (a 'draining: N live' text) and tries new connections. Checks that the
    stop returned only after the last session closed, every session whole, the live count shown
    and new connections refused once `accept_for` seconds of the drain have passed (drainer's
    accept window); returns the stop's duration."""
    sessions = [Session(length) for length in lengths]
    tasks = [asyncio.create_task(s.run(host, port)) for s in sessions]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in sessions)), budget)
    if not all(s.open for s in sessions):
        c.check("sessions open before the stop", False,
                "; ".join(s.describe() for s in sessions))
        await asyncio.gather(*tasks)
        return None
    c.check("sessions open before the stop", True,
            f"{len(sessions)} WebSocket sessions of {', '.join(f'{l:g}' for l in lengths)} s live")

    started = time.monotonic()
    say(f"  running {' '.join(stop_command)} with {len(sessions)} sessions held")
    stop = await asyncio.create_subprocess_exec(
        *stop_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    stop_output = asyncio.create_task(stop.communicate())

    samples = []  # (seconds into the stop, StatusText, open sessions before, after)
    refusals = []  # (seconds into the stop, outcome)
    draining_since = None
    while not stop_output.done():
        before = sum(s.open for s in sessions)
        text = await asyncio.to_thread(status)
        after = sum(s.open for s in sessions)
        at = time.monotonic() - started
        samples.append((at, text, before, after))
        if draining_since is None and text.startswith("draining"):
            draining_since = at
        # One try a second while sessions hold the drain: a connection accepted in the accept
        # window is counted and must drain too, and this one closes at once.
        if (draining_since is not None and any(s.open for s in sessions)
                and (not refusals or at - refusals[-1][0] >= 1)):
            outcome = await asyncio.to_thread(connect_outcome, host, port)
            refusals.append((time.monotonic() - started, outcome))
        await asyncio.wait([stop_output], timeout=0.5)
    output, _ = stop_output.result()
    stopped = time.monotonic() - started
    await asyncio.gather(*tasks)
    last_close = max(s.closed_at for s in sessions) - started

    # A session the server cut also ends before the stop returns: only whole sessions count.
    c.check("stop waited for the held sessions",
            stop.returncode == 0 and stopped >= last_close and all(s.whole() for s in sessions),
            f"`{' '.join(stop_command)}` returned {stop.returncode} after {stopped:.1f} s; the last "
            f"session closed {last_close:.1f} s into the stop"
            + "".join(f"; | {line}" for line in output.decode().strip().splitlines()[-4:]))
    c.check("every held session got all its data", all(s.whole() for s in sessions),
            "; ".join(s.describe() for s in sessions))
    shown = []
    for at, text, before, after in samples:
        if text.startswith("draining: ") and text.split()[1].isdigit():
            live = int(text.split()[1])
            shown.append((at, text, before, after, after <= live <= before and live >= 1))
    exact = [s for s in shown if s[4]]
    c.check(f"{status_name} shows the live count mid-drain", exact,
            (f"at {exact[0][0]:.1f} s: {exact[0][1]!r} with {exact[0][2]} session(s) open"
             if exact else "no 'draining: N live' matching the open sessions")
            + f" ({len(samples)} samples, distinct: {sorted(set(s[1] for s in samples))})")
    # In the accept window new connections are still served; after it, every one is refused.
    window_end = (draining_since or 0) + accept_for
    late = [(at, outcome) for at, outcome in refusals if at > window_end + 1]
    c.check("new connections during the drain are refused"
            + (f" after the {accept_for} s accept window" if accept_for else ""),
            late and all(outcome == "refused" for _, outcome in late),
            ", ".join(f"at {at:.1f} s: {outcome}" for at, outcome in refusals) or "none tried")
    return stopped


def install_drainer(c, plan):
    """Installs drainer the way a user would: its Debian package, with apt; returns the binary's
    path."""
    deb = os.path.join(SHARE, "dist", plan["deb"])
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", deb,
       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("drainer")
    c.check("the .deb installs with apt", path,
            f"{plan['deb']}: {sh('dpkg-query', '-W', 'drainer').strip()}, binary {path}")
    return path


def unit_states(units):
    """Each unit's `systemctl is-enabled` and `is-active` answers."""
    def answer(*args):
        done = subprocess.run(["systemctl", *args], capture_output=True, text=True)
        return done.stdout.strip() or done.stderr.strip().splitlines()[-1]
    return {unit: (answer("is-enabled", unit), answer("is-active", unit)) for unit in units}


def unit_names(*args):
    """The units `systemctl` lists with `args`, by name."""
    lines = sh("systemctl", *args, "--no-legend", "--plain", "--no-pager").splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def packages_scenario(c, plan):
    """`cargo xtask packages`, the first step of `./x test`, on a machine that runs systemd: the
    packages install, and the services they bring are neither enabled nor started, nor is anything
    else. The guest has no network: apt reads the image's local repository of those packages."""
    units = ["nginx.service", "haproxy.service", "nftables.service"]
    if os.path.lexists("/usr/sbin/policy-rc.d"):
        raise RuntimeError("the image has a /usr/sbin/policy-rc.d: the step would leave it be")
    before = unit_states(units)
    enabled_before = unit_names("list-unit-files", "--state=enabled")
    running_before = unit_names("list-units", "--state=active", "--type=service,socket,timer")
    c.evidence("before the package step", [f"{u}: is-enabled {e}, is-active {a}"
                                           for u, (e, a) in before.items()])

    # The image's sources name Debian's archive, which the guest cannot reach: set aside.
    sources = [path for path in ["/etc/apt/sources.list"] + glob.glob("/etc/apt/sources.list.d/*")
               if os.path.isfile(path)]
    for path in sources:
        os.rename(path, path + ".vm-deploy")
    local = "/etc/apt/sources.list.d/vm-deploy-packages.list"
    with open(local, "w") as out:
        out.write(f"deb [trusted=yes] file:{plan['packages_repository']} ./\n")
    try:
        started = time.monotonic()
        done = subprocess.run([os.path.join(SHARE, "dist", plan["xtask"]), "packages"],
                              capture_output=True, text=True, timeout=plan["budget_s"] * 4,
                              env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        took = time.monotonic() - started
    finally:
        os.remove(local)
        for path in sources:
            os.rename(path + ".vm-deploy", path)
    c.evidence(f"cargo xtask packages: exit {done.returncode} after {took:.0f} s",
               (done.stdout + done.stderr).strip().splitlines()[-12:])
    c.check("the package step succeeds", done.returncode == 0, f"exit {done.returncode}")
    missing = [p["program"] for p in plan["test_packages"] if not shutil.which(p["program"])]
    c.check("every program the tests run is installed", not missing,
            f"missing: {', '.join(missing)}" if missing
            else ", ".join(p["program"] for p in plan["test_packages"]))

    after = unit_states(units)
    for unit in units:
        enabled, active = after[unit]
        c.check(f"{unit} is installed, not enabled and not running, as before",
                enabled == "disabled" and active == before[unit][1] == "inactive",
                f"before: {before[unit][0]}, {before[unit][1]}; after: {enabled}, {active}")
    enabled_after = unit_names("list-unit-files", "--state=enabled")
    running_after = unit_names("list-units", "--state=active", "--type=service,socket,timer")
    c.check("no unit newly enabled, none disabled",
            enabled_after == enabled_before,
            f"newly enabled: {sorted(enabled_after - enabled_before) or 'none'}; "
            f"no longer enabled: {sorted(enabled_before - enabled_after) or 'none'}")
    c.check("no service, socket or timer newly running",
            not running_after - running_before,
            f"newly running: {sorted(running_after - running_before) or 'none'}")
    leftovers = [path for path in ("/run/systemd/system-preset/00-drainer-xtask.preset",
                                   "/usr/sbin/policy-rc.d") if os.path.lexists(path)]
    c.check("the step removed its preset and its policy-rc.d", not leftovers,
            ", ".join(leftovers) or "none left")


# The example units as the .deb ships them (deploy/systemd with drainer's installed path).
PACKAGED_UNITS = "/usr/share/doc/drainer/examples/systemd"


def install_unit(name, dropin):
    """The package's example unit as it is, and a drop-in with what the guest changes."""
    shutil.copy(os.path.join(PACKAGED_UNITS, name), os.path.join(UNITS, name))
    directory = os.path.join(UNITS, f"{name}.d")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vm-deploy.conf"), "w") as out:
        out.write(dropin)


def server_command(python_args=""):
    return f"/usr/bin/python3 {SHARE}/guest/ws_server.py --port {PORT}{python_args}"


def journal_checks(c, unit, since, runs_drainer, stops_with_drain_wait=False):
    """For a unit whose main process is drainer: READY, the STATUS= progress and
    EXTEND_TIMEOUT_USEC as PID 1 received them (it logs each notification at debug level), and
    drainer's release. For a unit whose ExecStop is `drainer drain --wait`: its stop timeout
    extended, and renewed before the first window ran out (the hold outlasts the renewal). For
    every unit: no stop timeout, no kill."""
    lines = journal(unit, since)
    killed = [l for l in lines if "timed out" in l.lower() or "Killing process" in l]
    c.check(f"{unit}: not timed out or killed", not killed, killed[0] if killed else "neither")
    c.evidence(f"journal of {unit}",
               [l for l in lines if "Got notification" in l or "drainer" in l or "ws_server" in l
                or "Stopp" in l or "Start" in l or "timed out" in l or "Killing" in l][:40])
    notes = [l for l in lines if "Got notification message" in l]
    extend = [l for l in notes if "EXTEND_TIMEOUT_USEC=" in l]
    if stops_with_drain_wait:
        c.check(f"{unit}: drain --wait extended its stop timeout, then renewed it",
                len(extend) >= 2, extend_summary(extend))
    if not runs_drainer:
        return
    ready = [l for l in notes if "READY=1" in l]
    draining = [l for l in notes if "STATUS=draining" in l]
    release = [l for l in lines if "releasing" in l or "drained" in l]
    c.check(f"{unit}: READY=1 in the journal", ready, ready[0] if ready else "none")
    c.check(f"{unit}: STATUS= progress in the journal", draining,
            f"{len(draining)} STATUS=draining notification(s)")
    c.check(f"{unit}: drainer's release in the journal", release, release[-1] if release else "none")
    c.check(f"{unit}: EXTEND_TIMEOUT_USEC in the journal", extend, extend_summary(extend))


def extend_summary(extend):
    return (f"{len(extend)} notification(s): "
            + ", ".join(l.split("EXTEND_TIMEOUT_USEC=")[1].split(",")[0].rstrip(")") for l in extend))


def systemd_scenario(c, plan, name, drainer):
    budget = plan["budget_s"]
    hold = plan["hold_s"]
    timeout_stop = plan["timeout_stop_s"]
    lengths = [min(6, hold), min(12, hold), hold]
    if name == "wrapper":
        unit = "app-under-drainer.service"
        # The server command is the only change; TimeoutStopSec is cut so the drain outlasts it.
        install_unit(unit, "[Service]\nExecStart=\n"
                     f"ExecStart={drainer} run --port {PORT} --drain-timeout 300s --kill-after 30s "
                     f"-- {server_command()}\nTimeoutStopSec={timeout_stop}s\n")
        units = [unit]
        start, stop_unit, status_unit, main_unit = unit, unit, unit, unit
    else:
        app = "app-with-drainer-companion.service"
        install_unit("drainer.service",
                     "[Service]\nExecStart=\n"
                     f"ExecStart={drainer} daemon --port {PORT} --drain-timeout 300s "
                     "--control-socket /run/drainer/drainer.sock\n")
        # The app's TimeoutStopSec is cut so the drain outlasts it: its ExecStop, `drainer drain
        # --wait`, extends it (the unit's NotifyAccess=all hands it the notify socket).
        install_unit(app, "[Service]\nExecStart=\n"
                     f"ExecStart={server_command()}\nExecStop=\n"
                     f"ExecStop={drainer} drain --wait --socket /run/drainer/drainer.sock\n"
                     f"TimeoutStopSec={timeout_stop}s\n")
        units = ["drainer.service", app]
        start, stop_unit, status_unit, main_unit = app, app, "drainer.service", app
    sh("systemctl", "daemon-reload")
    since = now_stamp()
    # PID 1 logs each sd_notify message it receives at debug level only.
    sh("systemd-analyze", "log-level", "debug")
    try:
        sh("systemctl", "start", start, timeout=budget)
        wait_until(f"port {PORT} accepting after starting {start}", port_accepts, budget)
        c.check(f"{status_unit} active after READY", prop(status_unit, "ActiveState") == "active",
                f"ActiveState={prop(status_unit, 'ActiveState')}, StatusText={prop(status_unit, 'StatusText')!r}")
        stopped = asyncio.run(drain_while_held(
            c, ["systemctl", "stop", stop_unit], status_text(status_unit),
            f"StatusText of {status_unit}", lengths, budget=budget))
        if stopped is not None:
            c.check(f"the drain outlasted TimeoutStopSec={timeout_stop}s without a kill",
                    stopped > timeout_stop and prop(main_unit, "Result") == "success",
                    f"stop took {stopped:.1f} s; {main_unit} Result={prop(main_unit, 'Result')}")
    finally:
        sh("systemd-analyze", "log-level", "info")
        for unit in units:
            sh("systemctl", "stop", unit, check=False, timeout=budget)
    for unit in units:
        journal_checks(c, unit, since, runs_drainer=unit == status_unit,
                       stops_with_drain_wait=name == "companion" and unit == stop_unit)


async def reload_while_held(c, unit, lengths, budget):
    """Opens sessions of `lengths` seconds, runs `systemctl reload unit` once all are live, and
    tries a new connection every 0.2 s until the last session has ended. Checks that the reload
    returned, that no new connection was refused, and that every session got all its data."""
    sessions = [Session(length) for length in lengths]
    tasks = [asyncio.create_task(s.run("127.0.0.1", PORT)) for s in sessions]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in sessions)), budget)
    c.check("sessions open before the reload", all(s.open for s in sessions),
            f"{len(sessions)} WebSocket sessions of {', '.join(f'{l:g}' for l in lengths)} s: "
            + "; ".join(s.describe() for s in sessions))
    started = time.monotonic()
    say(f"  running systemctl reload {unit} with {len(sessions)} sessions held")
    reload = await asyncio.create_subprocess_exec(
        "systemctl", "reload", unit, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    reload_output, _ = await asyncio.wait_for(reload.communicate(), budget)
    outcomes = []  # (seconds into the reload, outcome)
    while any(s.open for s in sessions):
        outcome = await asyncio.to_thread(connect_outcome)
        outcomes.append((time.monotonic() - started, outcome))
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    last_close = max(s.closed_at for s in sessions) - started
    c.check("systemctl reload succeeds", reload.returncode == 0,
            f"exit {reload.returncode} {reload_output.decode().strip()}")
    failed = [(at, outcome) for at, outcome in outcomes if outcome != "accepted"]
    c.check("no new connection refused during the restart", outcomes and not failed,
            f"{len(outcomes)} new connections over {last_close:.1f} s"
            + (f"; failed: {failed}" if failed else ", every one accepted"))
    c.check("every held session got all its data", all(s.whole() for s in sessions),
            "; ".join(s.describe() for s in sessions))
    # A session started now runs on the new generation.
    after = Session(1)
    await after.run("127.0.0.1", PORT)
    c.check("a new session after the restart is served", after.whole(), after.describe())


def reload_scenario(c, plan, drainer):
    """deploy/systemd's wrapper unit with a server that takes {port}: `systemctl reload` restarts
    it through `--restart-signal` while sessions are held and new connections arrive."""
    budget = plan["budget_s"]
    hold = plan["hold_s"]
    unit = "app-under-drainer.service"
    # The example's ExecReload (SIGHUP to drainer) stays; the server is the guest's, given {port}.
    install_unit(unit, "[Service]\nExecStart=\n"
                 f"ExecStart={drainer} run --port {PORT} --restart-signal SIGHUP "
                 f"--ready-timeout {budget:.0f}s --drain-timeout 300s --kill-after 30s "
                 f"-- /usr/bin/python3 {SHARE}/guest/ws_server.py --port {{port}}\n")
    sh("systemctl", "daemon-reload")
    since = now_stamp()
    try:
        sh("systemctl", "start", unit, timeout=budget)
        wait_until(f"port {PORT} accepting after starting {unit}", port_accepts, budget)
        main_pid = prop(unit, "MainPID")
        asyncio.run(reload_while_held(c, unit, [min(6, hold), min(12, hold), hold], budget))
        c.check("the unit stays active with the same drainer",
                prop(unit, "ActiveState") == "active" and prop(unit, "MainPID") == main_pid,
                f"ActiveState={prop(unit, 'ActiveState')}, MainPID {main_pid} -> "
                f"{prop(unit, 'MainPID')}, StatusText={prop(unit, 'StatusText')!r}")
    finally:
        sh("systemctl", "stop", unit, check=False, timeout=budget)
    lines = journal(unit, since)
    restart = [l for l in lines if "restart:" in l]
    c.evidence(f"journal of {unit}: the restart", restart[-12:])
    for needle in ("generation 2 started on port", "generation 2 listening on port",
                   f"new connections for port {PORT} go to generation 2",
                   "generation 1 released (its connections have all closed)",
                   "restart done, generation 2 serves"):
        c.check(f"the journal says: {needle}", any(needle in l for l in restart),
                next((l for l in restart if needle in l), "not found"))


APP_ROOTFS = "/srv/images/app-rootfs.tar"
BASE_IMAGE = "localhost/app-base:bookworm"
APP_IMAGE = "localhost/live-app:vm"
SOCKET = "/run/drainer/drainer.sock"
SECCOMP_PROFILE = os.path.join(SHARE, "deploy/kubernetes/drainer-seccomp.json")


def manifest_pod_spec():
    """The pod template of deploy/kubernetes/deployment.yaml: its spec, the sidecar and the
    app."""
    import yaml

    with open(os.path.join(SHARE, "deploy/kubernetes/deployment.yaml")) as text:
        for document in yaml.safe_load_all(text):
            if document and document.get("kind") == "Deployment":
                spec = document["spec"]["template"]["spec"]
                return spec, spec["initContainers"][0], spec["containers"][0]
    raise RuntimeError("deployment.yaml holds no Deployment")


def security_flags(context):
    """podman's flags for a Kubernetes securityContext, the fields the example uses; anything
    else in it is an error, so the pod here never runs looser than the manifest says."""
    flags = []
    known = {"privileged", "runAsUser", "runAsNonRoot", "readOnlyRootFilesystem",
             "allowPrivilegeEscalation", "capabilities", "seccompProfile"}
    unknown = set(context) - known
    if unknown:
        raise RuntimeError(f"securityContext fields this rehearsal does not map: {unknown}")
    if context.get("privileged"):
        flags.append("--privileged")
    if "runAsUser" in context:
        flags += ["--user", str(context["runAsUser"])]
    if context.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    caps = context.get("capabilities", {})
    for cap in caps.get("drop", []):
        flags += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        flags += ["--cap-add", cap]
    return flags


def sidecar_image(c, plan):
    """drainer's image, from the OCI archive `./x dist` built, loaded as a user would; returns
    its name and the binary's path in it (its entrypoint)."""
    loaded = sh("podman", "load", "-q", "-i", os.path.join(SHARE, "dist", plan["oci"]))
    name = loaded.strip().split("Loaded image:")[-1].strip().split()[0]
    entrypoint = sh("podman", "image", "inspect", "--format",
                    "{{index .Config.Entrypoint 0}}", name).strip()
    c.check("drainer's OCI archive loads", name and entrypoint,
            f"{plan['oci']}: {name}, entrypoint {entrypoint}")
    return name, entrypoint


def container_logs(name):
    """A container's output: podman logs passes its stderr, where drainer logs, as stderr."""
    return subprocess.run(["podman", "logs", name], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True).stdout


def container_started(name, budget, ready_text):
    """Waits until container `name` logs `ready_text`, or has exited; returns its logs and
    whether it runs."""
    def settled():
        logs = container_logs(name)
        state = sh("podman", "inspect", "--format", "{{.State.Status}}", name, check=False).strip()
        if ready_text in logs or state in ("exited", "stopped"):
            return logs, state
        return None
    logs, state = wait_until(f"container {name} starting", settled, budget)
    return logs, state == "running" and ready_text in logs


def seccomp_finding(c, image, sidecar, budget):
    """Does podman's default seccomp profile (containers-common) let drainer start with the
    manifest's capabilities? And the narrow profile of deploy/kubernetes?"""
    args = ["daemon", "--port", "8000", "--control-socket", "/tmp/probe.sock"]
    flags = security_flags({k: v for k, v in sidecar["securityContext"].items()
                            if k != "seccompProfile"})
    found = {}
    for label, opts in [("podman's default profile", []),
                        ("deploy/kubernetes/drainer-seccomp.json", ["--security-opt",
                                                                    f"seccomp={SECCOMP_PROFILE}"])]:
        name = "seccomp-probe"
        sh("podman", "rm", "-f", name, check=False)
        sh("podman", "run", "-d", "--name", name, "--network", "none", *flags, *opts,
           "--read-only-tmpfs", image, *args)
        logs, running = container_started(name, budget, "control socket")
        sh("podman", "rm", "-f", "-t", "0", name, check=False)
        found[label] = running
        c.evidence(f"the sidecar under {label}: {'starts' if running else 'fails'}",
                   logs.strip().splitlines()[-6:])
    c.check("podman's default seccomp profile blocks drainer (seccompProfile needed)",
            not found["podman's default profile"],
            "drainer " + ("started" if found["podman's default profile"] else "failed")
            + " under containers-common's default profile")
    c.check("drainer starts under deploy/kubernetes/drainer-seccomp.json",
            found["deploy/kubernetes/drainer-seccomp.json"], "see the evidence")


_images = []


def pod_images(c, plan, budget):
    """drainer's image loaded, and the app's built from Debian's packages and the drainer client
    copied from drainer's image; returns drainer's image and its binary's path. Once a run."""
    if not _images:
        _images.append(build_pod_images(c, plan, budget))
    return _images[0]


def build_pod_images(c, plan, budget):
    sh("podman", "import", "-q", APP_ROOTFS, BASE_IMAGE)
    image, binary = sidecar_image(c, plan)
    build = "/tmp/app-build"
    os.makedirs(build, exist_ok=True)
    shutil.copy(os.path.join(SHARE, "guest/ws_server.py"), build)
    # The manifest's recipe for the app image: its server beside the drainer client, copied from
    # drainer's image. The manifest runs `uvicorn main:app --host H --port P`; Debian's archive
    # has no uvicorn this image could take, so a `uvicorn` here starts the WebSocket server with
    # the same host and port, and the manifest's args run unchanged.
    with open(os.path.join(build, "uvicorn"), "w") as out:
        out.write("#!/bin/sh\n# Stands in for uvicorn: `uvicorn APP --host H --port P`.\n"
                  "exec python3 /app/ws_server.py --host \"$3\" --port \"$5\"\n")
    os.chmod(os.path.join(build, "uvicorn"), 0o755)
    with open(os.path.join(build, "Containerfile"), "w") as out:
        out.write(f"FROM {BASE_IMAGE}\nCOPY --from={image} {binary} /usr/local/bin/drainer\n"
                  "COPY ws_server.py /app/ws_server.py\nCOPY uvicorn /usr/local/bin/uvicorn\n")
    sh("podman", "build", "-q", "--pull=never", "-t", APP_IMAGE, build, timeout=budget)
    return image, binary


def pod_scenario(c, plan):
    budget = plan["budget_s"]
    hold = plan["hold_s"]
    spec, sidecar, app = manifest_pod_spec()
    image, binary = pod_images(c, plan, budget)

    seccomp_finding(c, image, sidecar, budget)

    # The pod: its network namespace, the emptyDir, the native sidecar first, then the app.
    sh("podman", "pod", "create", "--name", "live-app")
    sh("podman", "volume", "create", "drainer-run")
    infra = sh("podman", "pod", "inspect", "--format", "{{.InfraContainerID}}", "live-app").strip()
    seccomp = ["--security-opt", f"seccomp={SECCOMP_PROFILE}"]
    sidecar_flags = security_flags({k: v for k, v in sidecar["securityContext"].items()
                                    if k != "seccompProfile"})
    sh("podman", "run", "-d", "--pod", "live-app", "--name", "drainer", *sidecar_flags, *seccomp,
       "-v", "drainer-run:/run/drainer", image, *sidecar["args"])
    logs, running = container_started("drainer", budget, "control socket")
    if not c.check("the sidecar runs with the manifest's security context", running,
                   " ".join(sidecar_flags + seccomp)):
        c.evidence("the sidecar's log", logs.splitlines()[-10:])
        return
    app_flags = security_flags(app["securityContext"])
    sh("podman", "run", "-d", "--pod", "live-app", "--name", "app", *app_flags,
       "-v", "drainer-run:/run/drainer", APP_IMAGE, *app["args"])
    sh("podman", "start", infra)
    ip = sh("podman", "inspect", "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", infra).strip()
    wait_until(f"the app listening on {ip}:{PORT}", lambda: port_accepts(ip), budget)

    def pod_status():
        out = sh("podman", "exec", "drainer", binary, "status", "--json", "--socket", SOCKET,
                 check=False)
        try:
            status = json.loads(out)
        except ValueError:
            return ""
        return f"{status['state']}: {status['live']} live"

    # The kubelet's order: the app's preStop (as the app's user, through the shared socket),
    # then the app's SIGTERM, then the sidecar's.
    pre_stop = app["lifecycle"]["preStop"]["exec"]["command"]
    stop = ("set -e; "
            f"podman exec --user {app['securityContext']['runAsUser']} app "
            + " ".join(pre_stop) + "; echo preStop returned $?; "
            f"podman stop -t {spec['terminationGracePeriodSeconds']} app; podman stop drainer")
    accept_for = arg_seconds(sidecar["args"], "--accept-for")
    lengths = [accept_for + 4, accept_for + 8, max(hold, accept_for + 12)]
    stopped = asyncio.run(drain_while_held(
        c, ["sh", "-c", stop], pod_status, "drainer status in the pod", lengths, host=ip,
        budget=budget, accept_for=accept_for))
    app_log = container_logs("app")
    c.check("the app was stopped only after its last session",
            "SIGTERM: closing 0 live session(s)" in app_log,
            " ".join([l for l in app_log.splitlines() if "SIGTERM" in l][-1:])
            or "no SIGTERM in its log")
    c.evidence("the sidecar's log", container_logs("drainer").splitlines()[-14:])
    c.evidence("the app's log", app_log.splitlines()[-4:])
    sh("podman", "pod", "rm", "-f", "live-app", check=False)
    sh("podman", "volume", "rm", "-f", "drainer-run", check=False)


def arg_seconds(args, flag):
    value = args[args.index(flag) + 1] if flag in args else "0s"
    return float(value.rstrip("s"))


def kube_play(c, plan):
    """What podman 4.3's `kube play` makes of deploy/kubernetes/deployment.yaml, recorded as
    evidence (not a check): the manifest as it is, then without the sidecar's readinessProbe
    (which podman refuses on an init container) to see what it does with the rest. The images it
    names are tagged from the ones used above."""
    import yaml

    budget = plan["budget_s"]
    image, _ = pod_images(c, plan, budget)
    _, sidecar, app = manifest_pod_spec()
    sh("podman", "tag", image, sidecar["image"])
    sh("podman", "tag", APP_IMAGE, app["image"])
    manifest = os.path.join(SHARE, "deploy/kubernetes/deployment.yaml")
    with open(manifest) as text:
        documents = list(yaml.safe_load_all(text))
    for document in documents:
        if document and document.get("kind") == "Deployment":
            del document["spec"]["template"]["spec"]["initContainers"][0]["readinessProbe"]
    stripped = "/tmp/deployment-without-init-probe.yaml"
    with open(stripped, "w") as out:
        yaml.safe_dump_all(documents, out)
    for label, path in [("as it is", manifest), ("without the sidecar's readinessProbe", stripped)]:
        try:
            played = subprocess.run(["podman", "kube", "play", path], capture_output=True,
                                    text=True, timeout=budget)
            lines = [f"exit {played.returncode}"] + (played.stdout + played.stderr).strip().splitlines()
        except subprocess.TimeoutExpired:
            lines = [f"did not return within {budget:.0f} s"]
        # Time for a container that starts to fail, as the sidecar does without its seccomp
        # profile.
        time.sleep(min(10, budget / 8))
        for name in sh("podman", "ps", "-a", "--format", "{{.Names}}", check=False).split():
            if name.endswith("-infra"):
                continue
            lines.append(sh("podman", "inspect", "--format",
                            "{{.Name}}: {{.State.Status}} (exit {{.State.ExitCode}}), "
                            "user={{.Config.User}} read-only={{.HostConfig.ReadonlyRootfs}} "
                            "cap-add={{.HostConfig.CapAdd}} cap-drop={{.HostConfig.CapDrop}} "
                            "security-opt={{.HostConfig.SecurityOpt}} "
                            "restart={{.HostConfig.RestartPolicy.Name}}",
                            name, check=False).strip())
            lines += [f"  {name}: {l}" for l in container_logs(name).strip().splitlines()[-2:]]
        c.evidence(f"podman kube play deploy/kubernetes/deployment.yaml, {label}", lines)
        subprocess.run(["podman", "kube", "down", path], capture_output=True, timeout=budget)
        subprocess.run(["podman", "pod", "rm", "-a", "-f"], capture_output=True, timeout=budget)


def main():
    plan = json.load(open(os.path.join(SHARE, "plan.json")))
    with open("/proc/uptime") as uptime:
        booted = float(uptime.read().split()[0])
    plan["budget_s"] = plan["budget_boots"] * booted
    os.makedirs(RESULTS, exist_ok=True)
    say(f"booted in {booted:.1f} s")
    say(f"running {', '.join(plan['scenarios'])} (budget {plan['budget_s']:.0f} s a wait)")
    c = Checks()
    c.start("install")
    try:
        drainer = install_drainer(c, plan)
    except Exception:
        c.error(traceback.format_exc())
        drainer = None
    for name in plan["scenarios"] if drainer else []:
        c.start(name)
        try:
            if name == "packages":
                packages_scenario(c, plan)
            elif name == "reload":
                reload_scenario(c, plan, drainer)
            elif name in ("wrapper", "companion"):
                systemd_scenario(c, plan, name, drainer)
            elif name == "pod":
                pod_scenario(c, plan)
            elif name == "kube-play":
                kube_play(c, plan)
            else:
                raise RuntimeError(f"no scenario {name}")
        except Exception:
            c.error(traceback.format_exc())
        c.write()
    c.write()
    with open(os.path.join(RESULTS, "journal.txt"), "w") as out:
        subprocess.run(["journalctl", "-b", "-o", "short-precise", "--no-pager"], stdout=out)
    say("finished")


if __name__ == "__main__":
    try:
        main()
    finally:
        sys.stdout.flush()
        os.sync()
