# Two commands set up everything on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# pip takes these from this machine's disk (x86_64, Python 3.11); aarch64 gets the CPU build it has.
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,deploy,timm,mlflow,wandb,bench]'
	touch $@

demo: venv
	$(VENV)/bin/kdlab demo --force

test: venv
	$(PY) -m pytest -n 2 --dist loadfile

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
