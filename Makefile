# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= onnx,test,perf
# Frameworks the bundled torch/tf models and their tests run on (CPU builds); `FRAMEWORKS=` leaves them out:
# those models are then UNAVAILABLE with the reason and their tests skip. torch 2.13.0 is the CPU build kept on disk here.
FRAMEWORKS ?= torch==2.13.0 tensorflow-cpu
FW_STAMP := $(VENV)/.frameworks

.PHONY: serve test lint proto models perf clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

serve: $(STAMP) $(FW_STAMP)
	$(VENV)/bin/inferd serve

$(FW_STAMP): $(STAMP)
	$(if $(strip $(FRAMEWORKS)),$(PY) -m pip install -q $(FRAMEWORKS))
	touch $(FW_STAMP)

test: $(STAMP) $(FW_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check server backends clients perf tests

proto: $(STAMP)
	$(PY) proto/generate.py

models: $(STAMP)
	$(PY) model_repository/build.py

clean:
	rm -rf $(VENV)
