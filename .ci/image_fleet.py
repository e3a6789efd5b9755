"""CI's image stage, steps 2 and 3 (.ci/image.sh builds the image and calls this with the repository's .venv).

2. ``demo`` runs in the image under the pod security context the chart renders by default: its user and
   group, a read-only root filesystem with only the chart's writable mounts (its emptyDir volumes, as tmpfs
   at the same paths), all capabilities dropped, no privilege escalation.  It must print "nothing lost".
3. A fleet from the chart's own rendered Deployment (helm/shardlease/ci/container-fleet-values.yaml): one
   container per replica with the container's command, args and environment (fieldRef resolved to the
   container's name, as the kubelet resolves it to the pod's), the same security context and mounts, on one
   podman network with a Redis (the valkey server the image ships with shardlease[embedded]) and the local
   DynamoDB Streams endpoint (``python -m worker.local`` from the image).  Records are written before, while
   and after one worker is stopped with ``podman stop --time <terminationGracePeriodSeconds>``; every record
   must be handled exactly once and the stopped worker must exit 0.  The probes' paths answer 200 on the
   probes' port, and /metrics answers there too.

What stands in for the cluster: the Redis and endpoint containers carry network aliases equal to the host
names in the rendered SHARDLEASE_REDIS_URL and SHARDLEASE_ENDPOINT_URL (the values file names them as a
cluster's Services would be named), so NO rendered environment value is overridden.  Added beside it: dummy
AWS credentials (the pod's identity, IRSA, on a cluster).  The ConfigMap volume of the handler is a read-only
bind mount of .ci/fleet_handler/.  Ports are published on 127.0.0.1 so this script can reach them.

Every wait polls for its condition against a deadline; nothing sleeps for long.  Containers and the network
carry the label shardlease.ci.run=$SHARDLEASE_CI_RUN and are removed at the end, also on failure (after
their logs are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402  (the repository's venv)

from tests.helm.chart import CHART, env_list, one, render, resolve_env, worker_container  # noqa: E402

FLEET_VALUES = CHART / "ci" / "container-fleet-values.yaml"
HANDLER_DIR = ROOT / ".ci" / "fleet_handler"
HANDLED_KEY = "shardlease-ci:handled"  # .ci/fleet_handler/ci_fleet_handler.py writes it
RUN = os.environ.get("SHARDLEASE_CI_RUN") or f"ci-{os.getpid()}"
LABEL = f"shardlease.ci.run={RUN}"
# The pod's identity on a cluster (IRSA): the local endpoint accepts any credentials.
POD_IDENTITY = {"AWS_ACCESS_KEY_ID": "ci", "AWS_SECRET_ACCESS_KEY": "ci"}
# Security context keys this script knows how to apply; any other key fails the stage rather than being dropped.
KNOWN_SECURITY_KEYS = {
    "runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
    "capabilities", "seccompProfile", "privileged",
}


class StageFailed(Exception):
    """A check of the image stage failed; the message says which."""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise StageFailed(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return done.stdout.strip()


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> float:
    """Poll ``condition`` until it holds; the seconds it took.  StageFailed after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise StageFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


# The published ports are on 127.0.0.1: never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str) -> int:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


# ---- from the rendered pod spec to podman flags ----


def security_args(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """podman flags for the pod's and the container's securityContext (the container's keys win, as in
    Kubernetes).  Fails on a key it cannot apply, so the container never runs looser than the chart says."""
    pod_ctx = dict(pod.get("securityContext") or {})
    merged = pod_ctx | dict(container.get("securityContext") or {})
    unknown = set(merged) - KNOWN_SECURITY_KEYS
    if unknown:
        raise StageFailed(f"the chart's securityContext has keys this script does not apply: {sorted(unknown)}")
    if merged.get("privileged"):
        raise StageFailed("the chart renders a privileged container")
    uid = merged.get("runAsUser")
    if uid is None or int(uid) == 0:
        raise StageFailed(f"the chart must run as a non-root numeric user, renders runAsUser={uid!r}")
    if not merged.get("runAsNonRoot"):
        raise StageFailed("the chart does not set runAsNonRoot")
    gid = merged.get("runAsGroup", uid)
    args = ["--user", f"{uid}:{gid}"]
    if "fsGroup" in pod_ctx:  # the kubelet adds fsGroup to the container's supplementary groups
        args += ["--group-add", str(pod_ctx["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        # podman's --read-only adds tmpfs on /tmp, /run and /var/tmp unless told not to: only the chart's
        # own writable mounts may exist.
        args += ["--read-only", "--read-only-tmpfs=false"]
    caps = merged.get("capabilities") or {}
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap]
    if merged.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = (merged.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # RuntimeDefault is podman's default profile: nothing to pass
        raise StageFailed(f"seccompProfile {seccomp} is not applied by this script")
    return args


def _tmpfs_size(limit: str) -> str:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(limit))
    if not match:
        raise StageFailed(f"emptyDir sizeLimit {limit!r} not understood")
    return match.group(1) + (match.group(2) or "")[:1].lower()


def mount_args(pod: dict[str, Any], container: dict[str, Any], sources: dict[str, Path]) -> list[str]:
    """podman flags for the container's volumeMounts: an emptyDir becomes a tmpfs at the same path (its
    sizeLimit the tmpfs size), a ConfigMap or Secret a read-only bind mount of ``sources[volume name]``."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            options = ["rw", "exec", "mode=1777"]
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            if limit:
                options.append(f"size={_tmpfs_size(limit)}")
            args += ["--tmpfs", f"{path}:{','.join(options)}"]
        elif ("configMap" in volume or "secret" in volume) and mount["name"] in sources:
            args += ["--volume", f"{sources[mount['name']]}:{path}:ro"]
        else:
            raise StageFailed(f"volume {mount['name']!r} ({sorted(volume)}) has no stand-in in this script")
    return args


def probe_endpoints(container: dict[str, Any]) -> set[tuple[str, int]]:
    """(path, container port) of every httpGet probe, a named port resolved through the container's ports."""
    named = {p["name"]: int(p["containerPort"]) for p in container.get("ports", []) if "name" in p}
    found = set()
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = (container.get(kind) or {}).get("httpGet")
        if get:
            port = get["port"]
            found.add((get["path"], named[port] if isinstance(port, str) else int(port)))
    if not found:
        raise StageFailed("the chart renders no httpGet probes")
    return found


def published(name: str, port: int) -> str:
    """host:port on 127.0.0.1 where a container's port is published."""
    out = podman("port", name, f"{port}/tcp")
    return out.splitlines()[0].replace("0.0.0.0", "127.0.0.1")


# ---- step 2: the demo under the chart's security context ----


# Run inside the container: what the process really gets (ids, capabilities, no_new_privs, writable paths).
_INSPECT = """
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
writable = {}
for path in ("/", "/app", "/etc", "/usr/local", *os.environ["CHECK_PATHS"].split()):
    try:
        with open(os.path.join(path, ".shardlease-ci-probe"), "w"):
            pass
        writable[path] = True
    except OSError:
        writable[path] = False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
                  "cap_eff": int(status["CapEff"], 16), "no_new_privs": int(status["NoNewPrivs"]),
                  "writable": writable}))
"""


def check_enforced(image: str, flags: list[str], pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The flags take effect: the chart's user and group, no capabilities, no_new_privs, and only the chart's
    emptyDir mount paths writable."""
    ctx = dict(pod.get("securityContext") or {}) | dict(container.get("securityContext") or {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    empty_dirs = [m["mountPath"] for m in container.get("volumeMounts", []) if "emptyDir" in volumes[m["name"]]]
    out = podman("run", "--rm", "--label", LABEL, *flags, "--env", f"CHECK_PATHS={' '.join(empty_dirs)}",
                 "--entrypoint", "python", image, "-c", _INSPECT)
    got = json.loads(out.splitlines()[-1])
    expected_writable = {path: path in empty_dirs for path in got["writable"]}
    problems = []
    if (got["uid"], got["gid"]) != (ctx["runAsUser"], ctx.get("runAsGroup", ctx["runAsUser"])):
        problems.append(f"runs as {got['uid']}:{got['gid']}")
    if "fsGroup" in ctx and ctx["fsGroup"] not in got["groups"]:
        problems.append(f"fsGroup {ctx['fsGroup']} not among the groups {got['groups']}")
    if "ALL" in (ctx.get("capabilities") or {}).get("drop", []) and got["cap_eff"]:
        problems.append(f"effective capabilities {got['cap_eff']:#x}")
    if ctx.get("allowPrivilegeEscalation") is False and got["no_new_privs"] != 1:
        problems.append("no_new_privs is not set")
    if ctx.get("readOnlyRootFilesystem") and got["writable"] != expected_writable:
        problems.append(f"writable paths {got['writable']}, expected {expected_writable}")
    if problems:
        raise StageFailed("the container does not run under the chart's security context: " + "; ".join(problems))
    print(f"security context enforced: uid {got['uid']}, gid {got['gid']}, groups {got['groups']}, no capabilities, "
          f"no_new_privs, writable only {empty_dirs}", flush=True)


def run_demo(image: str, helm: str) -> None:
    docs = render(helm)  # the chart's defaults: what a user installs
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = worker_container(docs)
    flags = security_args(pod, container) + mount_args(pod, container, {})
    check_enforced(image, flags, pod, container)
    print(f"demo: podman run {' '.join(flags)} {image} demo", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        ["podman", "run", "--rm", "--label", LABEL, *flags, image, "demo", "--duration", "6"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    tail = "\n".join(done.stdout.splitlines()[-4:])
    if done.returncode != 0 or "nothing lost" not in done.stdout:
        raise StageFailed(f"demo failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    print(f"{tail}\ndemo under the chart's security context: {time.monotonic() - started:.1f}s", flush=True)


# ---- step 3: the fleet ----


class Fleet:
    """The containers of one fleet run; ``close`` removes them (and prints their logs when asked)."""

    def __init__(self, image: str, helm: str) -> None:
        self.image = image
        self.docs = render(helm, [FLEET_VALUES])
        self.deployment = one(self.docs, "Deployment")
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = worker_container(self.docs)
        self.grace_s = int(self.pod["terminationGracePeriodSeconds"])
        self.network = f"shardlease-{RUN}"
        self.names: list[str] = []
        self.workers: list[str] = []
        # The rendered environment (the same for every replica but SHARDLEASE_WORKER_ID, the pod's name): the
        # host names of the Redis and the endpoint come from it, the table too.
        sample = resolve_env(env_list(self.container), {}, "pod")
        self.redis_url = urlparse(sample["SHARDLEASE_REDIS_URL"])
        self.endpoint_url = urlparse(sample["SHARDLEASE_ENDPOINT_URL"])
        self.table = sample["SHARDLEASE_TABLE"]
        self.store: redis.Redis | None = None
        self.endpoint = ""
        self.written: list[str] = []
        self.count = 0

    def start_container(self, name: str, args: list[str]) -> None:
        podman("run", "-d", "--name", name, "--label", LABEL, "--network", self.network, *args)
        self.names.append(name)

    def start(self) -> None:
        podman("network", "create", "--label", LABEL, self.network)
        # The Redis and the endpoint are no part of the chart; they run under its restrictions all the same.
        redis_server = podman(
            "run", "--rm", "--label", LABEL, "--entrypoint", "python", self.image, "-c",
            "from leaser.embedded import find_redis_server; print(find_redis_server())",
        )
        base = [*security_args(self.pod, self.container), "--tmpfs", "/tmp:rw,mode=1777"]
        redis_port = self.redis_url.port or 6379
        self.start_container(f"{RUN}-redis", [
            *base, "--network-alias", str(self.redis_url.hostname), "-p", f"127.0.0.1::{redis_port}",
            "--entrypoint", redis_server, self.image,
            "--bind", "0.0.0.0", "--port", str(redis_port), "--protected-mode", "no", "--save", "", "--appendonly",
            "no", "--dir", "/tmp",
        ])
        endpoint_port = self.endpoint_url.port or 80
        self.start_container(f"{RUN}-streams", [
            *base, "--network-alias", str(self.endpoint_url.hostname), "-p", f"127.0.0.1::{endpoint_port}",
            "--entrypoint", "python", self.image,
            "-m", "worker.local", "--host", "0.0.0.0", "--port", str(endpoint_port), "--table", self.table,
            "--shards", "4", "--seed", "7",
        ])
        self.store = redis.Redis.from_url(f"redis://{published(f'{RUN}-redis', redis_port)}/0")
        self.endpoint = f"http://{published(f'{RUN}-streams', endpoint_port)}/"
        wait_for("the Redis container", self._redis_answers, 30)
        wait_for("the local endpoint container", lambda: "http://" in podman("logs", f"{RUN}-streams"), 30)

        entrypoint = json.dumps(self.container["command"])
        probes = probe_endpoints(self.container)
        ports = sorted({port for _, port in probes})
        flags = security_args(self.pod, self.container) + mount_args(
            self.pod, self.container, {"fleet-handler": HANDLER_DIR}
        )
        for i in range(int(self.deployment["spec"]["replicas"])):
            name = f"{self.deployment['metadata']['name']}-{RUN}-{i}"
            env = resolve_env(env_list(self.container), {}, name) | POD_IDENTITY
            publish = [arg for port in ports for arg in ("-p", f"127.0.0.1::{port}")]
            env_flags = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
            self.start_container(name, [
                *flags, *publish, *env_flags, "--hostname", name, "--entrypoint", entrypoint, self.image,
                *self.container.get("args", []),
            ])
            self.workers.append(name)

        # The probes: each worker's probe paths answer 200 on the probes' port.
        def all_probes_pass() -> bool:
            for name in self.workers:
                state = podman("inspect", "--format", "{{.State.Status}}", name)
                if state != "running":
                    raise StageFailed(f"{name} is {state}")
                for path, port in probes:
                    if http_status(f"http://{published(name, port)}{path}") != 200:
                        return False
            return True

        took = wait_for("the probes of every worker to answer 200", all_probes_pass, 60)
        paths = ", ".join(f"{path}:{port}" for path, port in sorted(probes))
        print(f"fleet: {len(self.workers)} workers started, probes ({paths}) answer 200 after {took:.1f}s", flush=True)
        metrics_port = next(int(p["containerPort"]) for p in self.container["ports"] if p["name"] == "metrics")
        with _DIRECT.open(f"http://{published(self.workers[0], metrics_port)}/metrics", timeout=5) as r:
            text = r.read().decode()
        if "shardlease_" not in text:
            raise StageFailed("/metrics answers without shardlease_ metrics")

    def _redis_answers(self) -> bool:
        assert self.store is not None
        try:
            return bool(self.store.ping())
        except redis.RedisError:
            return False

    def write(self, count: int) -> None:
        """Write ``count`` items through the local endpoint's write API (ShardleaseLocal.PutItem)."""
        for _ in range(count):
            self.count += 1
            body = json.dumps({"TableName": self.table, "Item": {"pk": {"S": f"item-{self.count % 97}"},
                                                                 "n": {"N": str(self.count)}}}).encode()
            request = urllib.request.Request(self.endpoint, data=body, method="POST", headers={
                "X-Amz-Target": "ShardleaseLocal.PutItem", "Content-Type": "application/x-amz-json-1.0"})
            with _DIRECT.open(request, timeout=5) as response:
                self.written.append(json.loads(response.read())["SequenceNumber"])

    def handled(self) -> list[tuple[str, str, str]]:
        assert self.store is not None
        rows = []
        for entry in self.store.lrange(HANDLED_KEY, 0, -1):
            worker, shard, seq = entry.decode().split()
            rows.append((worker, shard, seq))
        return rows

    def all_handled(self) -> bool:
        return set(self.written) <= {seq for _, _, seq in self.handled()}

    def handoff(self) -> None:
        # Before: waves of writes until every worker handles records of the latest waves (the shards are
        # spread over all three and stay so: the victim holds a lease to hand over when it is stopped).
        def every_worker_handles() -> bool:
            recent = set(self.written[-40:])
            self.write(20)
            return {w for w, _, seq in self.handled() if seq in recent} == set(self.workers)

        took = wait_for("every worker to handle records", every_worker_handles, 40, interval_s=0.5)
        wait_for("the records written so far to be handled", self.all_handled, 30)
        before = len(self.written)
        victim = self.workers[-1]
        print(f"fleet: all {len(self.workers)} workers handle records after {took:.1f}s; "
              f"stopping {victim} with podman stop --time {self.grace_s}", flush=True)
        # While: writes go on until `podman stop` returns (SIGTERM, then SIGKILL after the grace period).
        started = time.monotonic()
        stop = subprocess.Popen(["podman", "stop", "--time", str(self.grace_s), victim],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while stop.poll() is None:
            self.write(5)
            time.sleep(0.05)
        stopped_s = time.monotonic() - started
        during = len(self.written) - before
        if stop.returncode != 0:
            raise StageFailed(f"podman stop failed: {stop.stderr.read() if stop.stderr else ''}")
        code = podman("inspect", "--format", "{{.State.ExitCode}}", victim)
        if code != "0":
            raise StageFailed(f"{victim} exited {code} after podman stop --time {self.grace_s} (0 expected)")
        logs = subprocess.run(["podman", "logs", victim], capture_output=True, text=True, timeout=30, check=False)
        released = (logs.stdout + logs.stderr).count("released for shutdown")
        if not released:
            raise StageFailed(f"{victim} released no lease on SIGTERM: the handoff was not exercised")
        # After: the remaining workers take the victim's shards over and handle what follows.
        self.write(60)
        took = wait_for("every written record to be handled", self.all_handled, 40, interval_s=0.3)
        rows = self.handled()
        per_seq = Counter(seq for _, _, seq in rows)
        twice = sorted(seq for seq, n in per_seq.items() if n > 1)
        missing = set(self.written) - set(per_seq)
        if missing or twice:
            raise StageFailed(f"{len(missing)} records lost, {len(twice)} handled more than once: {twice[:5]}")
        per_worker = Counter(w for w, _, _ in rows)
        print(f"fleet: {victim} stopped in {stopped_s:.1f}s with exit code 0, releasing {released} leases; "
              f"{before} records written before, {during} during, 60 after; all {len(self.written)} handled once "
              f"(the last in {took:.1f}s); "
              f"per worker: {dict(sorted(per_worker.items()))}", flush=True)

    def close(self, show_logs: bool) -> None:
        if show_logs:
            for name in self.names:
                logs = subprocess.run(["podman", "logs", "--tail", "40", name], capture_output=True, text=True,
                                      check=False)
                print(f"--- logs of {name}\n{logs.stdout}{logs.stderr}", flush=True)
        if self.names:
            podman("rm", "-f", "-t", "0", *self.names, check=False)
        podman("network", "rm", "-f", self.network, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--helm", required=True)
    args = parser.parse_args()
    # SIGTERM (a cancelled CI job) unwinds like an error: the fleet's containers are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        started = time.monotonic()
        run_demo(args.image, args.helm)
        fleet = Fleet(args.image, args.helm)
        ok = False
        try:
            fleet.start()
            fleet.handoff()
            ok = True
        finally:
            fleet.close(show_logs=not ok)
        print(f"image fleet: {time.monotonic() - started:.1f}s", flush=True)
    except (StageFailed, AssertionError, subprocess.TimeoutExpired) as err:
        print(f"IMAGE STAGE FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
