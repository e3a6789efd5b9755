#!/usr/bin/env bash
# CI's image stage: build the container image from the repository's Dockerfile and run it.
#
#   1. the image answers --version and --help;
#   2. `demo` runs under the chart's rendered pod security context and reports "nothing lost";
#   3. a fleet of containers from the chart's rendered Deployment survives a `podman stop` of one worker;
#   4. the image's size and its Python packages are printed.
# Steps 2 and 3 are .ci/image_fleet.py (run with the repository's .venv, which .ci/run creates).
#
# This machine reaches no container registry, so python:3.11-slim cannot be pulled: the image is built on
# a stand-in (.ci/python-base.Containerfile) over a Debian bookworm base made with debootstrap from the
# mirror apt already uses.  The base is made once and kept in podman's storage (localhost/shardlease-ci/
# debian:$BASE_TAG); everything else is rebuilt on every run.  Elsewhere the Dockerfile builds on the
# official image unchanged (its PYTHON_IMAGE build argument).
#
# SHARDLEASE_SKIP_IMAGE=1 skips the stage on a developer's machine; with CI=true (1, yes) it is ignored.
# Podman's settings for this run only (runc: crun fails here on hybrid cgroups; ulimits within the hard
# limits, which podman's defaults exceed) are in a containers.conf that CONTAINERS_CONF points to.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0

if [ -n "${SHARDLEASE_SKIP_IMAGE:-}" ] && [ "${SHARDLEASE_SKIP_IMAGE}" != 0 ]; then
    if [[ "${CI:-}" =~ ^(1|[Tt]rue|TRUE|[Yy]es|YES)$ ]]; then
        echo "image stage: SHARDLEASE_SKIP_IMAGE is ignored in CI (CI=$CI): running it" >&2
    else
        echo "image stage: skipped (SHARDLEASE_SKIP_IMAGE=$SHARDLEASE_SKIP_IMAGE)"
        exit 0
    fi
fi

# Bump BASE_TAG when the debootstrap command below changes: a cached base of the old recipe is then ignored.
BASE_TAG=bookworm-2
BASE_IMAGE="localhost/shardlease-ci/debian:$BASE_TAG"
PYTHON_IMAGE="localhost/shardlease-ci/python:3.11"
IMAGE="localhost/shardlease:ci"
BASE_PACKAGES=python3,python3-venv,ca-certificates,passwd

scratch="$(mktemp -d)"
export SHARDLEASE_CI_RUN="ci-$$-$RANDOM"   # label of this run's containers and network (image_fleet.py)
cleanup() {
    # image_fleet.py removes what it starts; this catches anything an interrupted run left behind.
    if command -v podman >/dev/null 2>&1; then
        podman ps -aq --filter "label=shardlease.ci.run=$SHARDLEASE_CI_RUN" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
        podman network ls -q --filter "label=shardlease.ci.run=$SHARDLEASE_CI_RUN" | xargs -r podman network rm -f >/dev/null 2>&1 || true
    fi
    # debootstrap's rootfs holds root-owned device nodes and files: plain rm -rf removes them as root.
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT   # an interrupted run cleans up too (the EXIT trap)
trap 'exit 143' TERM
step() { echo "image stage: $* (${SECONDS}s)"; }

# ---- the tools ----
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "image stage: ${missing[*]} missing; install them (apt-get install -y podman runc debootstrap) or set SHARDLEASE_SKIP_IMAGE=1 outside CI" >&2; exit 1; }
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q podman runc debootstrap >"$scratch/apt.log" 2>&1 \
        || { apt-get update -q >>"$scratch/apt.log" 2>&1 && apt-get install -y -q podman runc debootstrap >>"$scratch/apt.log" 2>&1; } \
        || { cat "$scratch/apt.log"; exit 1; }
fi

nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$scratch/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$scratch/containers.conf"

# ---- the base: Debian bookworm from apt's own mirror, made once ----
mirror() {
    # The first Debian (not security) archive URI in apt's sources, one-line or deb822 format.
    local uri
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n -E -e 's/^deb(\s+\[[^]]*\])?\s+(\S+)\s.*/\2/p' -e 's/^URIs:\s*(\S+).*/\1/p' \
        | grep -v -- '-security' | head -n 1)"
    echo "${uri:-http://deb.debian.org/debian}"
}
if ! podman image exists "$BASE_IMAGE"; then
    step "making $BASE_IMAGE with debootstrap from $(mirror)"
    # dpkg without fsync while the throwaway rootfs is made (about 2x faster here); removed afterwards.
    mkdir -p "$scratch/rootfs/etc/dpkg/dpkg.cfg.d"
    echo force-unsafe-io >"$scratch/rootfs/etc/dpkg/dpkg.cfg.d/shardlease-ci-unsafe-io"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$scratch/rootfs" "$(mirror)" \
        >"$scratch/debootstrap.log" 2>&1 || { tail -n 40 "$scratch/debootstrap.log"; exit 1; }
    step "debootstrap done"
    # What a container never needs (as Debian's own slim images leave out): ~100 MB less to import.
    rm -rf "$scratch"/rootfs/etc/dpkg/dpkg.cfg.d/shardlease-ci-unsafe-io "$scratch"/rootfs/var/cache/apt/archives/*.deb \
        "$scratch"/rootfs/var/lib/apt/lists/* "$scratch"/rootfs/usr/share/doc/* "$scratch"/rootfs/usr/share/man/* \
        "$scratch"/rootfs/usr/share/locale/*
    tar -C "$scratch/rootfs" --numeric-owner -c . | podman import -q - "$BASE_IMAGE" >/dev/null
    rm -rf "$scratch/rootfs"
fi

# ---- the stand-in for python:3.11-slim (cheap; podman's layer cache keeps it when nothing changed) ----
mkdir -p "$scratch/python-base"
cp /etc/ssl/certs/ca-certificates.crt "$scratch/python-base/"
old_python="$(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE" 2>/dev/null || true)"
podman build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$PYTHON_IMAGE" \
    -f .ci/python-base.Containerfile "$scratch/python-base" >/dev/null
new_python="$(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE")"
# A new CA bundle makes a new stand-in; the old one would stay behind untagged.
if [ -n "$old_python" ] && [ "$old_python" != "$new_python" ]; then podman rmi "$old_python" >/dev/null 2>&1 || true; fi
step "base ready"

# ---- the image, from the repository's Dockerfile ----
old_id="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
# --layers=false: no intermediate images are kept (they would pile up with every change; the build takes
# ~10 s without them).
podman build --layers=false --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$IMAGE" . >"$scratch/build.log" 2>&1 \
    || { cat "$scratch/build.log"; exit 1; }
new_id="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
# The previous build's image, now untagged, would pile up run after run.
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi -f "$old_id" >/dev/null 2>&1 || true; fi
step "built $IMAGE"

# 1. The entrypoint answers.
podman run --rm "$IMAGE" --version
podman run --rm "$IMAGE" --help >"$scratch/help.txt" || { cat "$scratch/help.txt"; exit 1; }
grep -q "usage: shardlease" "$scratch/help.txt" || { echo "image stage: --help printed no usage:"; cat "$scratch/help.txt"; exit 1; }

# 2. and 3. The demo under the chart's security context, and the fleet from the chart's Deployment.
HELM="$(.ci/helm.sh)"
.venv/bin/python .ci/image_fleet.py --image "$IMAGE" --helm "$HELM"

# 4. What the image weighs and holds.
echo "image size: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1 / 1e6}')" \
    "(base $(podman image inspect --format '{{.Size}}' "$PYTHON_IMAGE" | awk '{printf "%.1f MB", $1 / 1e6}'))"
echo "python packages in the image:"
podman run --rm --entrypoint python "$IMAGE" -m pip list --format=freeze --disable-pip-version-check | sed 's/^/  /'
echo "image stage: ${SECONDS}s"
