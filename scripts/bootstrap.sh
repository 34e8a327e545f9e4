#!/usr/bin/env bash
# Create or update the project-local virtualenv (.venv/) with the pinned CPU stack.
# Idempotent: the install runs only when requirements/*.txt or pyproject.toml changed since the
# last successful run (a stamp file holds their hash), so a second call returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.mtrec-installed

want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "[bootstrap] installing the pinned stack into $VENV (first run takes a few minutes)" >&2
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -r requirements/cpu.txt -r requirements/test.txt
# torchrec's metadata asks for the CUDA fbgemm-gpu; fbgemm-gpu-cpu above provides the same module.
pip install --no-deps -r requirements/torchrec.txt
pip install --no-deps -e .
"$VENV/bin/python" -m pipeline.stack
echo "$want" > "$STAMP"
echo "[bootstrap] done" >&2
