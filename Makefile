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
	$(VENV)/bin/ruff format --check seglab tests benchmarks

test: install lint
	$(PY) -m pytest -q -n 2 --dist loadgroup

# One intra-op thread: PyTorch's spinning threads slow to a crawl when data workers share the two cores.
demo: install
	rm -rf $(DEMO_RUNS)
	OMP_NUM_THREADS=1 $(VENV)/bin/seglab train --basenet efficientnet_lite0 --pretrained package \
		--decoder fcn8s --dataset synthetic --dataset-options size=64 --crop 64 --batch-size 8 --iters 600 \
		--optimizer adamw --learnrate 0.001 --weight-decay 0.01 --warmup 20 --eval-every 100 --ckpt-every 100 --keep 100 \
		--workers 2 --device cpu --runs-root $(DEMO_RUNS) --run-name demo
	OMP_NUM_THREADS=1 $(VENV)/bin/seglab test $(DEMO_RUNS)/demo --last-k 3 --device cpu
	$(VENV)/bin/seglab runs --runs-root $(DEMO_RUNS)
	@echo "report: $(DEMO_RUNS)/demo/eval/*/report.html"

clean:
	rm -rf $(VENV) $(DEMO_RUNS)
