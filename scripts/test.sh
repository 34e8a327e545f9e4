#!/usr/bin/env bash
# Run the whole test suite inside .venv/ (bootstrap first via `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -ra "$@"
