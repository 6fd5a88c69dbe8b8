# Developer entry points. `make test` works on a fresh clone: it creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch is enough for the tests; on a GPU machine install your CUDA torch first and it is kept.
TORCH ?= torch==2.13.0

# Extra flags for the demo, e.g. `make demo DEMO_ARGS="--max_steps 5"` (CI runs it that way).
DEMO_ARGS ?=

.PHONY: install demo test bench quality format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The whole method offline: generate CGD data (demo student and teacher), build the training sets, train a tiny model.
# Each `make demo` trains afresh (`--overwrite_output_dir`); `cgd train` would refuse to rerun a finished run.
DEMO_DATA ?= outputs/cgd-demo/data

demo: install
	$(VENV)/bin/cgd generate --config examples/pipeline/demo.yaml --output_dir $(DEMO_DATA)
	$(VENV)/bin/cgd build --input $(DEMO_DATA)/records.jsonl --output_dir $(DEMO_DATA)/sets
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		examples/train.py --dataset_name $(DEMO_DATA)/sets/cgd.jsonl --overwrite_output_dir true $(DEMO_ARGS)

test: install
	$(PY) -m pytest

# CPU benchmarks (a few minutes each at most); benchmarks/gpu.py needs a CUDA GPU and is run by hand.
bench: install
	$(PY) benchmarks/prepare.py
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
