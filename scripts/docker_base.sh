#!/usr/bin/env bash
# Bootstrap a local Debian bookworm base image (`mtrec-base:bookworm` by default) for machines where no
# registry image (python:3.11-slim-bookworm) can be pulled.
#
#   debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm
#   + docker import
#
# bookworm's python3 is 3.11, which matches the cp311 wheels of the wheelhouse. Needs root (debootstrap
# chroots) and a running engine (scripts/docker_engine.sh). Skips everything if the image exists.
# The Debian mirror is the one apt uses on this machine (override: MTREC_DEBIAN_MIRROR=URL).
set -euo pipefail

IMAGE=${1:-mtrec-base:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

say() { echo "[docker_base] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already exists; nothing to do"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root to build $IMAGE (uid is $(id -u))"

# The first Debian archive URI apt is configured with (deb822 *.sources or one-line *.list files);
# security/updates archives are skipped because debootstrap needs the main archive.
apt_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
    cat "${files[@]}" 2>/dev/null \
        | sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
        | grep -E '/debian/?$' | grep -v -- '-security' | head -n 1
}

MIRROR=${MTREC_DEBIAN_MIRROR:-$(apt_mirror || true)}
[[ -n $MIRROR ]] || die "no Debian mirror found in /etc/apt/sources.list*; set MTREC_DEBIAN_MIRROR=URL"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "debootstrap is missing: installing it (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q debootstrap >&2; } \
        || die "apt-get install debootstrap failed (see the apt output above)"
fi

ROOTFS=$(mktemp -d /var/tmp/mtrec-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
say "debootstrap $SUITE from $MIRROR into $ROOTFS (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2 \
    || die "debootstrap failed; its log is $ROOTFS/debootstrap/debootstrap.log (kept until exit)"
# Package caches are not needed at run time and would only grow the image.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

say "importing the root filesystem as $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
say "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
