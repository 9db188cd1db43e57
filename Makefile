# The two commands of the README: `make run` and `make test`. Both do all set-up.
PYTHON ?= python3
VENV ?= .venv
# A GPU user picks another torch, e.g. make TORCH="torch==2.13.0" TORCH_INDEX=https://.../cu126
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
RUN_DIR ?= runs/main
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	{ cat constraints.txt; $(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" 2>/dev/null; } > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,all]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a small DreamerV3 (the dreamer-cpu preset) learns the built-in two-rooms task
# from 64x64 pixels for RUN_SECONDS of wall-clock, then the report: learning curves, the
# open-loop dream video (real context frames, then the prior alone, beside the real frames) and
# imagined against real reward. `wmlab bench dyna` is the tabular benchmark of chapter 8.
RUN_SECONDS ?= 540
RUN_THREADS ?= 2
run: $(STAMP)
	$(VENV)/bin/wmlab train --algo dreamer-cpu --env two-rooms \
	  --env-kwargs '{"reward": "dense", "goal_in_other_room": false, "max_episode_steps": 100}' \
	  --run-dir $(RUN_DIR) --force --train.steps 1000000 --train.time-limit $(RUN_SECONDS) \
	  --train.batch-size 16 --train.sequence-length 16 --train.train-ratio 128 \
	  --train.learning-starts 500 --train.eval-every 1000 --train.eval-episodes 10 \
	  --train.log-every 250 --train.threads $(RUN_THREADS)
	$(VENV)/bin/wmlab report $(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs
