"""Checks deploy/kubernetes/deployment.yaml against what drainer needs as a sidecar; prints one
line per problem and exits non-zero if there is any.

Usage: check_sidecar_manifest.py MANIFEST DRAINER_CARGO_TOML"""
import os
import re
import sys
import tomllib

import yaml

problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def seconds(text):
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


documents = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployments = [d for d in documents if d.get("kind") == "Deployment"]
check(len(deployments) == 1, "expected one Deployment")
pod = deployments[0]["spec"]["template"]["spec"]
sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
check(len(sidecars) == 1, "drainer must be a native sidecar: an initContainer with restartPolicy: Always")
sidecar = sidecars[0]
args = sidecar.get("args", [])
check(args[:1] == ["daemon"], "the sidecar runs `drainer daemon`")
check("--http" in args, "the sidecar serves /readyz over HTTP for the probes")
check("--http-token-file" not in args, "no HTTP drain endpoint: the preStop drains through the socket")
check("--control-socket" in args, "the sidecar's control socket is named, to share it with the app")
control_socket = args[args.index("--control-socket") + 1] if "--control-socket" in args else ""
drain_timeout = seconds(args[args.index("--drain-timeout") + 1]) if "--drain-timeout" in args else 300
accept_for = seconds(args[args.index("--accept-for") + 1]) if "--accept-for" in args else 0
check(accept_for < drain_timeout, f"--accept-for {accept_for} must be shorter than the drain timeout {drain_timeout}")
caps = sidecar.get("securityContext", {}).get("capabilities", {})
check(caps.get("drop") == ["ALL"], "the sidecar drops every capability first")
check(sorted(caps.get("add", [])) == ["BPF", "NET_ADMIN", "PERFMON"], f"least capabilities: {caps.get('add')}")
check(not sidecar.get("securityContext", {}).get("privileged", False), "the sidecar is not privileged")
seccomp = sidecar.get("securityContext", {}).get("seccompProfile", {})
check(
    seccomp == {"type": "Localhost", "localhostProfile": "drainer-seccomp.json"},
    f"the sidecar runs under the shipped drainer-seccomp.json, not Unconfined: {seccomp}",
)
profile = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "drainer-seccomp.json")
check(os.path.isfile(profile), f"{profile} ships beside the manifest")
check(sidecar.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "sidecar readiness on /readyz")
apps = pod.get("containers", [])
check(len(apps) >= 1, "an app container")
app = apps[0]
pre_stop = app.get("lifecycle", {}).get("preStop", {})
command = pre_stop.get("exec", {}).get("command", [])
check(command[:3] == ["drainer", "drain", "--wait"], f"the app's preStop runs `drainer drain --wait`: {command}")
check(command[-2:] == ["--socket", control_socket], f"the preStop uses the sidecar's socket {control_socket}")
socket_dir = control_socket.rsplit("/", 1)[0]


def volume_at(container, path):
    return next((m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == path), None)


shared = volume_at(sidecar, socket_dir)
check(shared is not None and shared == volume_at(app, socket_dir), f"both containers mount one volume at {socket_dir}")
app_uid = app.get("securityContext", {}).get("runAsUser")
allowed = [args[i + 1] for i, arg in enumerate(args) if arg == "--allow-uid"]
check(app_uid is not None and str(app_uid) in allowed, f"the sidecar allows the app's uid {app_uid} on the socket: {allowed}")
text = open(sys.argv[1]).read()
check("Authorization" not in text and not any(d.get("kind") == "Secret" for d in documents), "no token in the manifest")
check(app.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "app readiness follows /readyz")
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace > drain_timeout, f"terminationGracePeriodSeconds {grace} must exceed the drain timeout {drain_timeout}")

version = tomllib.load(open(sys.argv[2], "rb"))["package"]["version"]


def repository_and_tag(image):
    repository, _, tag = image.rpartition(":")
    # A registry's port is not a tag: host:5000/drainer has none.
    return (repository, tag) if repository and "/" not in tag else (image, "")


for container in pod.get("initContainers", []) + apps:
    image = container.get("image", "")
    _, tag = repository_and_tag(image)
    check("example" not in image and tag not in ("", "latest"), f"{container.get('name')}: a placeholder image {image!r}: name a versioned one")
repository, tag = repository_and_tag(sidecar.get("image", ""))
check(repository.rsplit("/", 1)[-1] == "drainer" and tag == version,
      f"the sidecar runs the image `./x dist` builds, drainer:{version} (pushed to a registry or not): {sidecar.get('image')}")
for source in re.findall(r"COPY --from=(\S+)", text):
    check(source == sidecar.get("image"), f"the app copies the client from the sidecar's image {sidecar.get('image')}, not {source}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
