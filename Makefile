# The two commands of the README: `make run` and `make test`. Both do all set-up.
PYTHON ?= python3
VENV ?= .venv
# A GPU user picks another torch, e.g. make TORCH="torch==2.13.0" TORCH_INDEX=https://.../cu126
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
RUN_DIR ?= runs/dyna-bench
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

# The main job: until a neural world model is the default, the Dyna benchmark of Sutton & Barto
# chapter 8, then its report.
run: $(STAMP)
	$(VENV)/bin/wmlab bench dyna --run-dir $(RUN_DIR) --force
	$(VENV)/bin/wmlab report $(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs
