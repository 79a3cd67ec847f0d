# ematix-flow: the two set-up commands are `make demo` and `make test`.
# Every install takes the exact versions in requirements-lock.txt (see "Dependency versions" in README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements-lock.txt
# pip with the lock as constraints; the package is built by the locked setuptools already in the venv
PIP_LOCKED := $(BIN)/pip install --quiet --constraint $(LOCK)

.PHONY: install demo test test-unit test-fast lint clean bench lock

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) pip setuptools wheel
	$(PIP_LOCKED) --no-build-isolation -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/flow demo

# The tiers (markers in pyproject.toml): `make test` is everything CI runs; `make test-unit` starts no
# process and generates no data (seconds); `make test-fast` is all but the slow and TPC-DS ones.
test: install
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q -m "not integration and not data"

test-fast: install
	$(BIN)/pytest -q -m "not slow and not tpcds"

lint: install
	$(BIN)/ruff check ematix_flow tests bench examples
	$(BIN)/ruff format --check ematix_flow tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Refresh the lock on purpose: the newest releases pyproject.toml's ranges allow, for every platform
# and Python >= 3.11. Then `make test`, and read the diff of requirements-lock.txt before committing.
lock: install
	$(PIP_LOCKED) uv
	$(BIN)/uv pip compile --quiet --upgrade --universal --python-version 3.11 --all-extras \
		pyproject.toml requirements-tools.in -o $(LOCK)

# TPC-H SF 1 on the mesh, DataFusion, DuckDB and PySpark (skipped with a note if it cannot install or start)
bench: install
	$(PIP_LOCKED) --no-build-isolation -e '.[bench,bench-spark]' \
		|| $(PIP_LOCKED) --no-build-isolation -e '.[bench]' \
		|| echo "note: matplotlib/pyspark did not install: no chart, no pyspark"
	$(BIN)/python -m bench tpch --sf 1 --engines mesh,mesh-adaptive,datafusion,duckdb,pyspark --workers 2 --runs 3 --out results/

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
