# medistill: `make demo` and `make test` are all a user types on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
REQS := requirements.txt requirements-nodeps.txt pyproject.toml
REQ_HASH = $(shell cat $(REQS) | sha256sum | cut -d' ' -f1)
DEMO_OUT ?= demo_out
# Keep pip's notes about local mirror folders out of the log; real errors still show.
PIP_QUIET := grep -v "^WARNING: Location 'file://" || true

export KERAS_HOME ?= $(CURDIR)/$(VENV)/keras-home
export MPLCONFIGDIR ?= $(CURDIR)/$(VENV)/mpl-config
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MPLBACKEND ?= Agg

.PHONY: venv demo test bench clean

# The venv is rebuilt whenever the requirements change (the stamp holds their hash).
venv:
	@if [ ! -x $(PY) ] || [ "$$(cat $(STAMP) 2>/dev/null)" != "$(REQ_HASH)" ]; then \
	  echo "==> creating $(VENV) (requirements changed or missing; a few minutes the first time)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET); \
	  $(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIP_QUIET); \
	  $(PY) -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | $(PIP_QUIET); \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_QUIET); \
	  $(PY) -c "import medistill, tensorflow, keras, medpy.metric" ; \
	  echo "$(REQ_HASH)" > $(STAMP); \
	else echo "==> $(VENV) is up to date"; fi

# The demo until the unsupervised pipeline lands: phantoms -> supervised student ->
# predict_eval on held-out phantoms. Run again, it reuses what is already done.
DEMO_TRAIN := $(DEMO_OUT)/data/train
DEMO_TEST := $(DEMO_OUT)/data/test
demo: venv
	$(PY) -m medistill phantoms --out $(DEMO_TRAIN) --n 200 --size 128 --seed 0 --overwrite
	$(PY) -m medistill phantoms --out $(DEMO_TEST) --n 50 --size 128 --seed 1 --overwrite
	$(PY) -m medistill train --data $(DEMO_TRAIN) --out $(DEMO_OUT)/supervised --student unet \
	  --student-options '{"base_filters": 16}' --img-size 128 --epochs 20 --batch 8 --lr 3e-3
	$(PY) predict_eval.py --image_dir $(DEMO_TEST)/images --mask_dir $(DEMO_TEST)/masks \
	  --model_path $(DEMO_OUT)/supervised --vis_dir $(DEMO_OUT)/eval
	@echo "==> demo outputs: $(DEMO_OUT)/supervised (model, curves.png) and $(DEMO_OUT)/eval (metrics, overlays)"

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
