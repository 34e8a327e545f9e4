# The two commands of the README. Each one sets up .venv/ itself (idempotently) first.
#   make run    prepare census, train AdaTT+DML on 2 processes via TorchX local_cwd, evaluate, print the table
#   make test   the whole test suite (what .ci/run calls)
SHELL := /bin/bash
PY := .venv/bin/python
RUN_DIR ?= runs/census_adatt_dml

.PHONY: setup run test clean
setup:
	@scripts/bootstrap.sh

run: setup
	@scripts/run_census.sh $(RUN_DIR)

test: setup
	@scripts/test.sh

clean:
	rm -rf runs out .pytest_cache

# Build the Docker image mtrec:cpu offline: engine, wheelhouse, base image, docker build (docs/DOCKER.md).
.PHONY: image
image: setup
	@scripts/docker_build.sh
