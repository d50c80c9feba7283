# A new user needs two commands: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-packages test test-fast demo smoke bench lint clean

setup: $(STAMP) system-packages

# torch and torchvision first (pinned: they lie on this machine's disk), then the package.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[cpu,dev,openvino]"
	touch $(STAMP)

# Fashion-MNIST (real images, offline) and Chromium (the report test) from Debian, when we can.
system-packages:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  command -v chromium >/dev/null || need="$$need chromium"; \
	  if [ -n "$$need" ]; then \
	    echo "installing Debian packages:$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: skipping Debian packages (dataset-fashion-mnist, chromium)"; fi

test: setup
	# two workers, one test file each at a time (module fixtures are built once): 9.3 -> 6.2 min on 2 cores
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-fast: setup
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow"

demo: setup
	bash scripts/demo.sh

smoke: setup
	$(VENV)/bin/richkd-deploy train recipes/smoke.yaml --force

bench: setup
	$(PY) benchmarks/distill_overhead.py
	$(PY) benchmarks/export_latency.py
	$(PY) benchmarks/corruptions.py

lint: setup
	$(VENV)/bin/ruff check richkd_deploy exporters tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
