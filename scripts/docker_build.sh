#!/usr/bin/env bash
# Build the mtrec image offline: wheelhouse on the host, `pip install --no-index` in the image.
#
#   scripts/docker_build.sh [--device cpu|cuda] [--tag TAG] [--base IMAGE] [--uid UID]
#   (defaults: cpu, mtrec:<device>, see "base image" below, 1000; also `make image`)
#
# Steps (each says what it does on stderr):
#   1. engine      scripts/docker_engine.sh (reuse a running engine, or install/start dockerd as root)
#   2. wheelhouse  docker/wheelhouse/<device>/: `pip download` of the lock + torchrec (--no-deps),
#                  sdists turned into wheels on the host. Cached: rebuilt only when the hash of the
#                  lock files changes (stamp file inside). The lock is requirements/cpu.txt for cpu
#                  and docker/requirements-cuda.txt for cuda; torchrec comes from requirements/torchrec.txt.
#   3. project     docker/build/project/: the project's wheel, rebuilt every time (code changes) but
#                  byte-identical for identical sources, so Docker's layer cache still hits.
#                  docker/build/share/: configs/ and data/census-income-kdd/ (become /opt/mtrec).
#   4. base image  --base IMAGE, else python:3.11-slim-bookworm when present locally, else the local
#                  mtrec-base:bookworm (scripts/docker_base.sh bootstraps it with debootstrap).
#   5. build       docker build -f docker/Dockerfile docker/ (context = docker/, see docker/.dockerignore),
#                  first the `deps` stage alone, tagged <tag>-deps, then the image
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cpu
TAG=
BASE=
USER_ID=1000
while [[ $# -gt 0 ]]; do
    case $1 in
        --device) DEVICE=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --uid) USER_ID=$2; shift 2 ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
        *) echo "[docker_build] ERROR: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
TAG=${TAG:-mtrec:$DEVICE}
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || { echo "[docker_build] ERROR: $PY not found: run \`make setup\` first (the host venv runs pip)" >&2; exit 1; }
# Absolute, but not symlink-resolved: the venv's python must stay the venv's.
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
PUBLIC_BASE=python:3.11-slim-bookworm
LOCAL_BASE=mtrec-base:bookworm
# [project] 1980-01-01, the earliest zip timestamp: identical sources give a byte-identical wheel.
REPRODUCIBLE_EPOCH=315532800

say() { echo "[docker_build] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# pip's "Location ... is ignored" warnings come from this machine's pip config, not from us.
pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file" >&2); }
phase_start() { PHASE_T0=$SECONDS; say "$*"; }
phase_done() { say "  ... done in $((SECONDS - PHASE_T0))s"; }

case $DEVICE in
    cpu) LOCK=requirements/cpu.txt ;;
    cuda) LOCK=docker/requirements-cuda.txt ;;
    *) die "--device must be cpu or cuda, got '$DEVICE'" ;;
esac
TORCHREC_LOCK=requirements/torchrec.txt

phase_start "1/5 engine"
scripts/docker_engine.sh
phase_done

# ---- 2. wheelhouse ------------------------------------------------------------------------------------
# Fails (before any large download where possible) when the wheelhouse would not match DEVICE:
# cpu must never contain the CUDA torch/fbgemm (multi-GB), cuda must never contain the CPU torch.
check_wheelhouse() {
    local dir=$1 torch_wheel
    torch_wheel=$(cd "$dir" && ls torch-*.whl 2>/dev/null | head -n 1)
    [[ -n $torch_wheel ]] || die "no torch wheel in $dir after pip download"
    ls "$dir"/torchrec-*.whl >/dev/null 2>&1 || die "no torchrec wheel in $dir after pip download"
    if [[ $DEVICE == cpu ]]; then
        [[ $torch_wheel == *+cpu* ]] || die "$dir has $torch_wheel, not the CPU build of torch"
        ls "$dir"/fbgemm_gpu_cpu-*.whl >/dev/null 2>&1 || die "$dir lacks fbgemm-gpu-cpu (see $LOCK)"
        ! ls "$dir"/fbgemm_gpu-*.whl "$dir"/nvidia_*.whl >/dev/null 2>&1 \
            || die "$dir contains CUDA wheels (fbgemm-gpu / nvidia-*); the cpu lock must not pull them"
    else
        [[ $torch_wheel != *+cpu* ]] || die "$dir has $torch_wheel, the CPU build, for DEVICE=cuda"
        ls "$dir"/fbgemm_gpu-*.whl >/dev/null 2>&1 || die "$dir lacks fbgemm-gpu (see $LOCK)"
    fi
}

build_wheelhouse() {
    local dest=$1 tmp=$1.tmp constraints
    rm -rf "$tmp" && mkdir -p "$tmp"
    constraints=$(mktemp)
    # [project] Pin the torch *build* too, so pip fails fast instead of fetching the wrong multi-GB wheel.
    # On the project's machines pip resolves torch==2.13.0 to the local CPU wheel; elsewhere point pip
    # at the PyTorch CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
    local torch_version
    torch_version=$(sed -nE 's/^torch==([^[:space:]#+]+).*/\1/p' "$LOCK")
    [[ -n $torch_version ]] || die "$LOCK has no torch==<version> line"
    if [[ $DEVICE == cpu ]]; then echo "torch==$torch_version+cpu"; else echo "torch!=$torch_version+cpu"; fi >"$constraints"
    pip download -d "$tmp" -c "$constraints" -r "$LOCK" \
        || die "pip download of $LOCK failed (message above); with torch==$torch_version+cpu missing," \
               "set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
    rm -f "$constraints"
    pip download -d "$tmp" --no-deps -r "$TORCHREC_LOCK" || die "pip download of $TORCHREC_LOCK failed"
    # Source-only packages (e.g. iopath) are built into wheels here: the image has no build tools.
    # Reproducibly, so a rebuilt wheelhouse with the same lock still hits Docker's layer cache.
    local sdists=()
    mapfile -t sdists < <(find "$tmp" -maxdepth 1 \( -name '*.tar.gz' -o -name '*.zip' \))
    if [[ ${#sdists[@]} -gt 0 ]]; then
        SOURCE_DATE_EPOCH=$REPRODUCIBLE_EPOCH pip wheel --no-deps --no-build-isolation --no-index -w "$tmp" "${sdists[@]}" \
            || die "building wheels from the sdists ${sdists[*]} failed"
        rm -f "${sdists[@]}"
    fi
    check_wheelhouse "$tmp"
    cp "$LOCK" "$tmp/requirements.txt"
    cp "$TORCHREC_LOCK" "$tmp/torchrec.txt"
    echo "$2" >"$tmp/.lock.sha256"
    rm -rf "$dest" && mv "$tmp" "$dest"
}

WHEELHOUSE=docker/wheelhouse/$DEVICE
LOCK_HASH=$( { echo "$DEVICE"; cat "$LOCK" "$TORCHREC_LOCK"; } | sha256sum | cut -d' ' -f1)
phase_start "2/5 wheelhouse $WHEELHOUSE (lock $LOCK + $TORCHREC_LOCK)"
if [[ -f $WHEELHOUSE/.lock.sha256 && $(cat "$WHEELHOUSE/.lock.sha256") == "$LOCK_HASH" ]]; then
    say "  up to date (lock hash ${LOCK_HASH:0:12})"
else
    say "  (re)building: pip download on the host"
    build_wheelhouse "$WHEELHOUSE" "$LOCK_HASH"
fi
say "  $(du -sh "$WHEELHOUSE" | cut -f1), torch wheel: $(cd "$WHEELHOUSE" && ls torch-*.whl)"
phase_done

# ---- 3. project wheel + shipped files -----------------------------------------------------------------
phase_start "3/5 project wheel + configs/ + data/census-income-kdd/ -> docker/build/"
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
# Build from a clean copy: an in-tree build/ directory could carry deleted modules into the wheel.
tar -c --exclude=__pycache__ --exclude='*.pyc' pyproject.toml pipeline models \
    $(ls README.md LICENSE 2>/dev/null) | tar -x -C "$SRC"
rm -rf docker/build/project.tmp && mkdir -p docker/build/project.tmp
(cd "$SRC" && SOURCE_DATE_EPOCH=$REPRODUCIBLE_EPOCH pip wheel --no-deps --no-build-isolation --no-index \
    -w "$OLDPWD/docker/build/project.tmp" .) || die "building the project wheel failed"
touch -d "@$REPRODUCIBLE_EPOCH" docker/build/project.tmp/*.whl
rm -rf docker/build/project && mv docker/build/project.tmp docker/build/project
rm -rf docker/build/share && mkdir -p docker/build/share/data
cp -a configs docker/build/share/configs
cp -a data/census-income-kdd docker/build/share/data/census-income-kdd
say "  $(cd docker/build/project && ls *.whl)"
phase_done

# ---- 4. base image ------------------------------------------------------------------------------------
phase_start "4/5 base image"
if [[ -z $BASE ]]; then
    if docker image inspect "$PUBLIC_BASE" >/dev/null 2>&1; then
        BASE=$PUBLIC_BASE
    else
        say "  $PUBLIC_BASE is not present locally (docker pull it where a registry is reachable);" \
            "using the bootstrapped $LOCAL_BASE"
        scripts/docker_base.sh "$LOCAL_BASE"
        BASE=$LOCAL_BASE
    fi
fi
say "  BASE_IMAGE=$BASE"
phase_done

# ---- 5. docker build ----------------------------------------------------------------------------------
phase_start "5/5 docker build -t $TAG (DEVICE=$DEVICE, UID=$USER_ID)"
# [project] The `deps` stage is tagged ($TAG-deps) so `docker image prune` cannot drop it as dangling:
# it holds the installed stack, the slow part (minutes) of a cold build.
for target in deps final; do
    docker build -f docker/Dockerfile --force-rm \
        --build-arg BASE_IMAGE="$BASE" --build-arg DEVICE="$DEVICE" --build-arg UID="$USER_ID" \
        $([[ $target == deps ]] && echo "--target deps -t $TAG-deps" || echo "-t $TAG") docker/ >&2 \
        || die "docker build ($target) failed (the failing step's message is above)"
done
say "  $TAG: $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
phase_done
