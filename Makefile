# medistill: `make demo` and `make test` are all a user types on a fresh machine.
# GPU=1 (`make demo GPU=1`, `make test GPU=1`, `make venv GPU=1`) installs TensorFlow's
# CUDA extra (requirements-gpu.txt) instead of the CPU-only default.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GPU ?= 0
STAMP := $(VENV)/.requirements.sha256
REQS := requirements.txt requirements-nodeps.txt pyproject.toml
ifeq ($(GPU),1)
REQS += requirements-gpu.txt
endif
# The stamp holds the hash of the installed requirement files and of the GPU choice,
# so changing either rebuilds the venv.
REQ_HASH = $(shell (cat $(REQS); echo "GPU=$(GPU)") | sha256sum | cut -d' ' -f1)
DEMO_OUT ?= demo_out
# Keep pip's notes about local mirror folders out of the log; real errors still show.
PIP_QUIET := grep -v "^WARNING: Location 'file://" || true

export KERAS_HOME ?= $(CURDIR)/$(VENV)/keras-home
export MPLCONFIGDIR ?= $(CURDIR)/$(VENV)/mpl-config
# TF_CPP_MIN_LOG_LEVEL is left to the entry points (medistill.console.quiet_libraries): exporting
# 2 here would let TensorFlow print 'failed call to cuInit' in every step on a machine without a GPU.
export MPLBACKEND ?= Agg

.PHONY: venv demo demo-report test bench clean

# The venv is rebuilt whenever the requirements or GPU change (the stamp holds their hash).
# With GPU=1 the CUDA extra is installed in a second pip call, after the CPU pins: torch's
# CUDA 13 wheels and TensorFlow's CUDA 12 wheels both ship nvidia/cudnn and nvidia/nccl,
# and installing TensorFlow's last makes sure TensorFlow gets the cuDNN it was built for.
venv:
	@if [ ! -x $(PY) ] || [ "$$(cat $(STAMP) 2>/dev/null)" != "$(REQ_HASH)" ]; then \
	  echo "==> creating $(VENV) (requirements changed or missing; a few minutes the first time; GPU=$(GPU))"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET); \
	  $(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIP_QUIET); \
	  if [ "$(GPU)" = 1 ]; then $(PY) -m pip install -q -r requirements-gpu.txt 2>&1 | $(PIP_QUIET); fi; \
	  $(PY) -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | $(PIP_QUIET); \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_QUIET); \
	  $(PY) -c "import medistill, tensorflow, keras, medpy.metric" ; \
	  if [ "$(GPU)" = 1 ]; then $(PY) -c "import tensorflow as tf; \
	    print('==> GPUs TensorFlow sees:', tf.config.list_physical_devices('GPU') or 'none (check the NVIDIA driver)')"; fi; \
	  echo "$(REQ_HASH)" > $(STAMP); \
	else echo "==> $(VENV) is up to date (GPU=$(GPU))"; fi

# ---------------------------------------------------------------------------------------
# The demo: the whole unsupervised pipeline on synthetic phantoms, then one table.
#   labelled phantoms (with masks) -> Creat_yolodata.py -> detection.py train -> the
#   detector's threshold chosen on the labelled validation images -> boxes for the
#   unlabelled and the test images -> meddistill.py (LiteMedSAM teacher, no masks) ->
#   predict_eval.py on the test images; the teacher on the test boxes; a supervised
#   student on the labelled + unlabelled images with their masks as the upper bound.
# Each step leaves a record in $(DEMO_OUT)/steps/ (its wall and CPU time); a step whose record
# exists is not run again, and a killed step resumes where it stopped.
# Sizes are variables: `make demo DEMO_UNLABELLED=300 DISTIL_EPOCHS=80` runs a bigger one.
DEMO_SIZE ?= 128
# The seed of every training step (detector, distillation, supervised); the data stay the same.
DEMO_SEED ?= 0
DEMO_LABELLED ?= 100
DEMO_UNLABELLED ?= 64
DEMO_TEST ?= 24
DET_EPOCHS ?= 40
DISTIL_EPOCHS ?= 40
SUP_EPOCHS ?= 15
STUDENT ?= unet
STUDENT_OPTIONS ?= {"base_filters": 16}
REPORT ?= $(PY) -m medistill report

DATA := $(DEMO_OUT)/data
RUNS := $(DEMO_OUT)/runs
BOXES := $(DEMO_OUT)/boxes
EVAL := $(DEMO_OUT)/eval
STEPS := $(DEMO_OUT)/steps
DEMO_STEPS := $(addprefix $(STEPS)/,01-phantoms 02-yolodata 03-detector 04-conf 05-boxes \
  06-meddistill 07-teacher-test 08-eval-distilled 09-supervised 10-eval-supervised)

# A step's first and last recipe lines: announce it and note its start; write its record
# (wall time, and the CPU time of the commands, which make's children used: the fair
# figure on a machine shared with other work; null where /proc is missing).
CPU_TICKS = awk '{print $$16 + $$17}' /proc/$$PPID/stat 2>/dev/null || echo -1
step_start = @mkdir -p $(STEPS); echo "==> $(notdir $@)"; \
  echo "$$(date +%s.%N) $$($(CPU_TICKS))" > $(STEPS)/.$(notdir $@).start
step_end = @read wall0 cpu0 < $(STEPS)/.$(notdir $@).start; cpu1=$$($(CPU_TICKS)); \
  awk -v step="$(notdir $@)" -v w0="$$wall0" -v w1="$$(date +%s.%N)" -v c0="$$cpu0" -v c1="$$cpu1" \
    -v hz="$$(getconf CLK_TCK)" -v when="$$(date '+%F %T')" 'BEGIN { \
    cpu = (c0 < 0 || c1 < 0) ? "null" : sprintf("%.1f", (c1 - c0) / hz); \
    printf "{\"step\": \"%s\", \"seconds\": %.1f, \"cpu_seconds\": %s, \"finished\": \"%s\"}\n", \
      step, w1 - w0, cpu, when }' > $@; \
  rm -f $(STEPS)/.$(notdir $@).start

DEMO_TABLE = $(REPORT) table --mask_dir $(DATA)/test/masks --boxes $(BOXES)/test.json \
  --teacher-cache $(RUNS)/teacher_test.h5 --student-eval $(EVAL)/distilled \
  --supervised-eval $(EVAL)/supervised --timings $(STEPS) --out $(DEMO_OUT)

demo: $(DEMO_STEPS) | venv
	$(DEMO_TABLE)

# The table again, from what the steps left (after changing a step by hand, say).
demo-report: | venv
	$(DEMO_TABLE)

# Labelled (detector training), unlabelled (distillation) and test phantoms; the
# supervised upper bound trains on labelled + unlabelled with their masks.
$(STEPS)/01-phantoms: | venv
	$(step_start)
	$(PY) -m medistill phantoms --out $(DATA)/labelled --n $(DEMO_LABELLED) --size $(DEMO_SIZE) --seed 0 --overwrite
	$(PY) -m medistill phantoms --out $(DATA)/unlabelled --n $(DEMO_UNLABELLED) --size $(DEMO_SIZE) --seed 3 --overwrite
	$(PY) -m medistill phantoms --out $(DATA)/test --n $(DEMO_TEST) --size $(DEMO_SIZE) --seed 1 --overwrite
	rm -rf $(DATA)/supervised; mkdir -p $(DATA)/supervised/images $(DATA)/supervised/masks
	for part in labelled unlabelled; do for kind in images masks; do for file in $(DATA)/$$part/$$kind/*; do \
	  cp "$$file" "$(DATA)/supervised/$$kind/$${part}_$${file##*/}"; done; done; done
	$(step_end)

$(STEPS)/02-yolodata: $(STEPS)/01-phantoms
	$(step_start)
	$(PY) Creat_yolodata.py --image_dir $(DATA)/labelled/images --mask_dir $(DATA)/labelled/masks \
	  --out $(DEMO_OUT)/yolo --split 0.8 0.2 0 --class-names lesion --overwrite
	$(step_end)

$(STEPS)/03-detector: $(STEPS)/02-yolodata
	$(step_start)
	$(PY) detection.py train --data $(DEMO_OUT)/yolo/data.yaml --model yolo11n.yaml --imgsz $(DEMO_SIZE) \
	  --epochs $(DET_EPOCHS) --batch 4 --seed $(DEMO_SEED) --out $(RUNS)/detector
	$(step_end)

# The threshold with the best box F1 on the labelled validation images.
$(STEPS)/04-conf: $(STEPS)/03-detector
	$(step_start)
	$(PY) detection.py predict --weights $(RUNS)/detector/weights/best.pt --image_dir $(DEMO_OUT)/yolo/images/val \
	  --conf 0.05 --out $(BOXES)/val.json
	$(REPORT) conf --boxes $(BOXES)/val.json --mask_dir $(DATA)/labelled/masks --out $(BOXES)/conf.txt
	$(step_end)

$(STEPS)/05-boxes: $(STEPS)/04-conf
	$(step_start)
	$(PY) detection.py predict --weights $(RUNS)/detector/weights/best.pt --image_dir $(DATA)/unlabelled/images \
	  --conf $$(cat $(BOXES)/conf.txt) --out $(BOXES)/unlabelled.json
	$(PY) detection.py predict --weights $(RUNS)/detector/weights/best.pt --image_dir $(DATA)/test/images \
	  --conf $$(cat $(BOXES)/conf.txt) --out $(BOXES)/test.json
	$(step_end)

$(STEPS)/06-meddistill: $(STEPS)/05-boxes
	$(step_start)
	$(PY) meddistill.py --image_dir $(DATA)/unlabelled/images --boxes $(BOXES)/unlabelled.json \
	  --teacher litemedsam --student $(STUDENT) --student-options '$(STUDENT_OPTIONS)' --img-size $(DEMO_SIZE) \
	  --epochs $(DISTIL_EPOCHS) --batch 8 --seed $(DEMO_SEED) --out $(RUNS)/distilled
	$(step_end)

$(STEPS)/07-teacher-test: $(STEPS)/05-boxes
	$(step_start)
	$(PY) -m medistill teach --image_dir $(DATA)/test/images --boxes $(BOXES)/test.json --teacher litemedsam \
	  --out $(RUNS)/teacher_test.h5
	$(step_end)

$(STEPS)/08-eval-distilled: $(STEPS)/06-meddistill
	$(step_start)
	$(PY) predict_eval.py --image_dir $(DATA)/test/images --mask_dir $(DATA)/test/masks \
	  --model_path $(RUNS)/distilled --vis_dir $(EVAL)/distilled --num_vis 8
	$(step_end)

$(STEPS)/09-supervised: $(STEPS)/01-phantoms
	$(step_start)
	$(PY) -m medistill train --data $(DATA)/supervised --out $(RUNS)/supervised --student $(STUDENT) \
	  --student-options '$(STUDENT_OPTIONS)' --img-size $(DEMO_SIZE) --epochs $(SUP_EPOCHS) --batch 8 --lr 3e-3 --seed $(DEMO_SEED)
	$(step_end)

$(STEPS)/10-eval-supervised: $(STEPS)/09-supervised
	$(step_start)
	$(PY) predict_eval.py --image_dir $(DATA)/test/images --mask_dir $(DATA)/test/masks \
	  --model_path $(RUNS)/supervised --vis_dir $(EVAL)/supervised --num_vis 8
	$(step_end)

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
