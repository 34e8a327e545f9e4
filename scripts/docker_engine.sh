#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, starting one when needed.
#
#   1. An engine already answers: use it (nothing is installed or started).
#   2. Otherwise, as root: install Debian's `docker.io` when `dockerd` is missing, start `dockerd` in
#      the background (log: $MTREC_DOCKERD_LOG, default /var/log/mtrec-dockerd.log) and wait for it.
#   3. Otherwise fail, saying why.
# Everything this script says goes to stderr; it exits 0 only when `docker info` works.
# [project] The engine is left running afterwards, so later builds and jobs reuse it.
set -euo pipefail

LOG=${MTREC_DOCKERD_LOG:-/var/log/mtrec-dockerd.log}
WAIT_S=${MTREC_DOCKERD_WAIT_S:-90}

say() { echo "[docker_engine] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    say "using the running Docker engine ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    die "no Docker engine answers \`docker info\` and this user (uid $(id -u)) is not root, so none can be" \
        "started here. Start dockerd (or join the docker group) and retry."
fi

if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd is missing: installing the Debian package docker.io (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # A stale package list fails the install; refresh it once and retry before giving up.
    apt-get install -y -q docker.io >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q docker.io >&2; } \
        || die "apt-get install docker.io failed (see the apt output above)"
fi

if pgrep -x dockerd >/dev/null 2>&1; then
    say "a dockerd process exists but does not answer yet; waiting for it"
else
    say "no Docker engine running: starting dockerd in the background (log: $LOG)"
    mkdir -p "$(dirname "$LOG")"
    # setsid + nohup: the engine must outlive this script and the shell or test that called it.
    setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
fi

for ((i = 0; i < WAIT_S; i++)); do
    if engine_up; then
        say "Docker engine up after ${i}s ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
        exit 0
    fi
    sleep 1
done
say "last lines of $LOG:"
tail -n 20 "$LOG" >&2 2>/dev/null || true
die "dockerd did not answer \`docker info\` within ${WAIT_S}s"
