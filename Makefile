# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv on first use
# and says what it is doing; later runs skip what is already installed.
#   make serve                    the bundled ONNX and Python models (a 252 MB venv)
#   make serve FRAMEWORKS=all     also the torch and TensorFlow examples (about 2 GB more)
#   make serve ARGS="--grpc-port 9001 --log-level DEBUG"    flags for `inferd serve`
#   make test  ARGS="-k grpc"     flags for pytest
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
ARGS ?=
# auto: build the native gRPC front end (native/), installing grpc++ with apt-get where that
# needs no password; no: skip it (gRPC is then served by grpc.aio).
NATIVE ?= auto
ifeq ($(filter auto no,$(NATIVE)),)
$(error NATIVE must be 'auto' or 'no', not '$(NATIVE)')
endif
# CPU builds for the torch and TensorFlow examples and backend tests (torch 2.13.0 is the CPU
# build kept on disk on this project's machines).
FRAMEWORK_PACKAGES ?= torch==2.13.0 tensorflow-cpu
FRAMEWORKS_REPOSITORY := examples/frameworks
SOURCES := protocol clients server backends perf tests proto model_repository setup.py

SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
FW_STAMP := $(VENV)/.installed-frameworks

# none: the bundled repository only; all: the framework examples too. `make test` installs the
# frameworks so their backend tests run; `make test FRAMEWORKS=none` skips them (the tests skip).
serve: FRAMEWORKS ?= none
test: FRAMEWORKS ?= all

.PHONY: serve test lint proto models clean test-protobuf-oldest test-grpc-aio

$(VENV)/bin/python:
	@echo "[inferd] creating $(VENV) (first run only)"
	@$(PYTHON) -m venv $(VENV)

$(SERVE_STAMP): pyproject.toml setup.py native/grpc_frontend.cc native/shm_guard.c | $(VENV)/bin/python
	@bash native/ensure-grpcpp.sh $(NATIVE)
	@echo "[inferd] installing inferd with ONNX Runtime and tritonclient into $(VENV) (about 250 MB, first run only)"
	@$(PIP) -e '.[onnx,client]'
	@touch $@

$(TEST_STAMP): pyproject.toml $(SERVE_STAMP)
	@echo "[inferd] installing the test tools, tritonclient[all] and kserve into $(VENV) (first run only)"
	@$(PIP) -e '.[onnx,test,perf]'
	@touch $@

$(FW_STAMP): | $(VENV)/bin/python
	@echo "[inferd] installing $(FRAMEWORK_PACKAGES) into $(VENV) (about 2 GB, first run only)"
	@$(PIP) $(FRAMEWORK_PACKAGES)
	@touch $@

frameworks-%:
	@case "$*" in none) ;; all) $(MAKE) --no-print-directory $(FW_STAMP) ;; \
	  *) echo "FRAMEWORKS must be 'none' or 'all', not '$*'" >&2; exit 2 ;; esac

serve: $(SERVE_STAMP)
	@$(MAKE) --no-print-directory frameworks-$(FRAMEWORKS)
	@echo "[inferd] starting the server (.venv/bin/inferd serve; Ctrl-C stops it)"
	@$(VENV)/bin/inferd serve $(if $(filter all,$(FRAMEWORKS)),--model-repository model_repository --model-repository $(FRAMEWORKS_REPOSITORY)) $(ARGS)

test: $(TEST_STAMP)
	@$(MAKE) --no-print-directory frameworks-$(FRAMEWORKS)
	$(PY) -m pytest -q $(ARGS)

# The stubs under the oldest protobuf this project supports (the newest is what `make test` has).
# The gRPC tests again on the pure-Python front end (grpc.aio), where grpc++ serves by default.
GRPC_TESTS := tests/test_grpc_infer.py tests/test_grpc_errors.py tests/test_grpc_native.py tests/test_decoupled.py \
	tests/test_access.py tests/test_request_limits.py tests/test_triton_examples.py tests/test_e2e_serve.py \
	tests/test_io_threads.py tests/test_client.py tests/test_perf_analyzer.py tests/test_sequence_batching.py \
	tests/test_tls.py
test-grpc-aio: $(TEST_STAMP)
	INFERD_TEST_GRPC_FRONTEND=aio $(PY) -m pytest -q $(GRPC_TESTS) $(ARGS)

test-protobuf-oldest: $(TEST_STAMP)
	$(PY) tests/protobuf_runtime.py --oldest -- -m pytest -q tests/test_proto_stubs.py tests/test_client.py tests/test_grpc_infer.py tests/test_grpc_wire.py

# Style, types and the architecture's import rules (pyproject.toml [tool.importlinter]).
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy server backends clients perf protocol
	$(VENV)/bin/lint-imports

# The benchmarks (perf/README.md): `make perf` lists them, `make perf BENCH=kserve ARGS="--rounds 5"`
# runs one (ARGS are its options; `make perf BENCH=protocol ARGS=--help` shows them).
.PHONY: perf
perf: $(TEST_STAMP)
	@$(VENV)/bin/inferd perf bench $(if $(BENCH),$(BENCH) $(ARGS),--list)

# Malformed requests at scale against a fresh server (perf/fuzz.py): 100,000 per transport by
# default, `make fuzz ARGS="--requests 5000 --seed 7"` for other runs. Exit status 1 on any
# crash, hang, internal error or RSS over the bound.
.PHONY: fuzz
fuzz: $(TEST_STAMP)
	$(VENV)/bin/inferd perf fuzz $(ARGS)

proto: $(TEST_STAMP)
	$(PY) proto/generate.py

models: $(TEST_STAMP)
	$(PY) model_repository/build.py

clean:
	rm -rf $(VENV)
