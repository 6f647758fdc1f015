# The README's two commands: `make demo` and `make test`. Both build .venv from the pinned
# constraints in requirements/ (Python 3.10+; the lock is made on 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test demo bench lock clean

# The provider and the AEP emulator (./aep-emulator, its own distribution) in one pip call: the
# provider's [emulator] extra pins aep-emulator, which resolves to the local copy, not an index.
$(STAMP): pyproject.toml aep-emulator/pyproject.toml requirements/constraints.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt \
		-e ./aep-emulator -e '.[emulator,celery]'
	touch $@

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# demo/ is neither distribution: it runs from the repository root (it uses dags/ there).
demo: venv
	$(BIN)/python -m demo

bench: venv
	$(BIN)/python -m benchmarks

# Re-pin after changing dependencies in pyproject.toml or requirements/dev.txt.
lock: venv
	(echo "# Pinned dependency set for Python 3.11 (make lock regenerates it)"; \
	 $(BIN)/pip freeze --exclude-editable | grep -v '^-e') > requirements/constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info aep-emulator/build aep-emulator/*.egg-info .pytest_cache
