# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= onnx,test,perf

.PHONY: serve test lint proto models perf clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/inferd serve

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check server backends clients perf tests

proto: $(STAMP)
	$(PY) proto/generate.py

models: $(STAMP)
	$(PY) model_repository/build.py

clean:
	rm -rf $(VENV)
