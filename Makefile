# Everything creates or reuses the virtual environment in .venv first.
#   make demo    the main job: a teacher, the student alone and the student distilled (demo.py)
#   make test    the test suite (then the formula tests again under two other CPU kernel families)
#   make check   the quick suite: everything but the slow end-to-end tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# main job settings (override on the command line: make demo DEMO_ARGS="--epochs 5")
DEMO_ARGS   ?=

# the formula tests (loss terms against hand computations, model forwards and foldings): run
# again under other CPU kernel families (PyTorch's ATEN_CPU_CAPABILITY), so that a tolerance too
# tight for one of them fails here first
FORMULA_TESTS := tests/test_kd.py tests/test_kd_crd.py tests/test_kd_feature_terms.py \
                 tests/test_kd_logit_terms.py tests/test_models.py tests/test_cifar_resnet.py \
                 tests/test_wrn_vgg.py tests/test_mobile_shuffle.py
KERNELS ?= default avx2

.PHONY: venv system-deps demo demo-data test test-kernels check bench clean-outputs help

help:
	@echo "make demo   - a teacher, the student alone and the student distilled, in one table (demo.py)"
	@echo "make test   - run the test suite (the formula tests also under KERNELS=$(KERNELS))"
	@echo "make check  - the quick suite: everything but the slow end-to-end tests"
	@echo "make venv   - create/update .venv from requirements.txt"

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

# graphviz's `dot` is needed by visualize.py (torchviz); Debian/Ubuntu package: graphviz.
# PostgreSQL (initdb, pg_ctl) for the sweep tests' database case; Debian package: postgresql.
system-deps:
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing graphviz (for visualize.py)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; visualize.py needs it (apt-get install graphviz)"; \
	  else \
	    echo "note: graphviz's 'dot' is missing; visualize.py needs it: sudo apt-get install graphviz"; \
	  fi; \
	fi
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing postgresql (for the sweep tests' database case)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "warning: could not install postgresql; tests/test_sweep.py skips its PostgreSQL case"; \
	  else \
	    echo "note: PostgreSQL is missing; tests/test_sweep.py skips its PostgreSQL case (sudo apt-get install postgresql)"; \
	  fi; \
	fi

# the demo's data: the real Fashion-MNIST (Debian's dataset-fashion-mnist, installed when run as
# root) unless CIFAR-10 is in ./data; without either, demo.py falls back to synthetic patterns
demo-data:
	@if [ ! -d ./data/cifar-10-batches-py ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Fashion-MNIST (Debian's dataset-fashion-mnist) for the demo"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "warning: could not install dataset-fashion-mnist; the demo uses synthetic data"; \
	  else \
	    echo "note: no CIFAR-10 in ./data and no Fashion-MNIST (sudo apt-get install dataset-fashion-mnist): the demo uses synthetic data"; \
	  fi; \
	fi

demo: $(STAMP) demo-data
	$(PY) demo.py $(DEMO_ARGS)

test: $(STAMP) system-deps
	@start=$$(date +%s); \
	$(PY) -m pytest -q -rs -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder tests && \
	$(MAKE) --no-print-directory test-kernels && \
	echo "make test: passed in $$(( $$(date +%s) - start )) s on $$(nproc) cores of $$($(PY) -c 'from skipkd.train.setup import cpu_model; print(cpu_model())') (environment set-up not counted)"

# one pytest process per kernel family, all at once (less start-up than pytest-xdist's workers
# for each in turn); each one's output is printed when all have ended, failures included
test-kernels: $(STAMP)
	@logs=$$(mktemp -d); pids=""; \
	for k in $(KERNELS); do \
	  ATEN_CPU_CAPABILITY=$$k $(PY) -m pytest -q -p no:cacheprovider -p no:xdist \
	    $(FORMULA_TESTS) > $$logs/$$k.log 2>&1 & pids="$$pids $$!"; \
	done; \
	status=0; for p in $$pids; do wait $$p || status=1; done; \
	for k in $(KERNELS); do echo "formula tests with ATEN_CPU_CAPABILITY=$$k"; cat $$logs/$$k.log; done; \
	rm -r $$logs; exit $$status

check: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m pytest -q -rs -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder -m "not slow" tests && \
	echo "make check: passed in $$(( $$(date +%s) - start )) s on $$(nproc) cores of $$($(PY) -c 'from skipkd.train.setup import cpu_model; print(cpu_model())')"

clean-outputs:
	rm -rf runs saved_pth_model/*.pth numpy_outputs/*.npy numpy_outputs/*.json
