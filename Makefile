# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seglab-installed
DEMO_RUNS ?= runs-demo

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check seglab tests benchmarks

test: install lint
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: install
	$(VENV)/bin/seglab models --size 512

clean:
	rm -rf $(VENV) $(DEMO_RUNS)
