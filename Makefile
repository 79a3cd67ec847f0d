# ematix-flow: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint typecheck clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m ematix_flow.demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ematix_flow tests bench examples
	$(BIN)/ruff format --check ematix_flow tests bench examples
	$(BIN)/mypy

# TPC-H SF 1 on the mesh, DataFusion, DuckDB and PySpark (skipped with a note if it cannot install or start)
bench: install
	$(BIN)/pip install --quiet -e '.[bench,bench-spark]' || $(BIN)/pip install --quiet -e '.[bench]' \
		|| echo "note: matplotlib/pyspark did not install: no chart, no pyspark"
	$(BIN)/python -m bench tpch --sf 1 --engines mesh,mesh-adaptive,datafusion,duckdb,pyspark --workers 2 --runs 3 --out results/

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
