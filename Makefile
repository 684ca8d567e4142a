# knhkd — the two commands an operator needs: `make run` and `make test`.
# Both set themselves up: .venv is created when missing and the project is
# (re)installed with its test extras whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint imports typecheck unit integration fuzz bench clean

# The native hot path is compiled by the install: rebuild when its sources change.
$(STAMP): pyproject.toml setup.py native/ffibuild.py $(wildcard native/src/*.c native/src/*.h native/include/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/knhkd run

lint: $(STAMP)
	$(BIN)/ruff check knhkd tests bench

imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict knhkd

test: lint imports typecheck
	$(BIN)/python -m pytest -q tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# The fuzz tests of `make test` with a large case budget (KNHKD_FUZZ_BUDGET
# cases per test; `make test` runs 600).
FUZZ_BUDGET ?= 10000
fuzz: $(STAMP)
	KNHKD_FUZZ_BUDGET=$(FUZZ_BUDGET) $(BIN)/python -m pytest -q \
		-o timeout=0 tests/integration/test_fuzz.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
