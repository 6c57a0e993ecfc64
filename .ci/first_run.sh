#!/usr/bin/env bash
# A new user's first hour, checked: clone the repository, run the README's two commands, and fail
# when a promise of the README is broken.
#   make serve   ready (HTTP /v2/health/ready 200, every model READY, strict readiness) within
#                FIRST_START_LIMIT_S seconds of a fresh clone, with a venv of at most VENV_LIMIT_MB
#   make test    the whole suite, README snippets included (tests/test_readme.py)
#   packaging    pip install . / -e . print no warnings; sdist and wheel pass twine check; the
#                wheel installed in a venv outside the checkout serves its bundled repository
# Usage: .ci/first_run.sh [--skip-test]      (checks the checkout's HEAD commit)
set -euo pipefail
FIRST_START_LIMIT_S=${FIRST_START_LIMIT_S:-60}
VENV_LIMIT_MB=${VENV_LIMIT_MB:-800}
skip_test=false
[[ ${1:-} == --skip-test ]] && skip_test=true

src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/inferd-first-run.XXXXXX)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then stop_server; fi
  rm -rf "$work"
}
trap cleanup EXIT
# make and the server it starts run in a process group of their own: Ctrl-C's signal goes to both.
stop_server() { kill -INT -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" || true; server_pid=; }
failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== clone"
git clone -q "$src" "$work/inferd"
cd "$work/inferd"

echo "== make serve (first start, timed)"
http=$(free_port); grpc=$(free_port); metrics=$(free_port)
start=$(date +%s.%N)
# A fresh machine has no pip cache: without one, the timing includes the downloads.
PIP_NO_CACHE_DIR=1 setsid make serve ARGS="--http-port $http --grpc-port $grpc --metrics-port $metrics" > "$work/serve.log" 2>&1 &
server_pid=$!
ready=""
while kill -0 "$server_pid" 2>/dev/null; do
  elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  if python3 - "$http" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
try:
    urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1)
    index = json.load(urllib.request.urlopen(urllib.request.Request(f"{base}/v2/repository/index", data=b"{}"), timeout=5))
except Exception:
    sys.exit(1)
sys.exit(0 if index and all(m.get("state") == "READY" for m in index) else 1)
PY
  then ready=$elapsed; break; fi
  python3 -c "import sys; sys.exit(0 if float('$elapsed') < 600 else 1)" || break
  sleep 0.5
done
if [[ -z $ready ]]; then
  fail "make serve never became ready (log below)"; cat "$work/serve.log" >&2
else
  echo "first start: ready with every model READY after ${ready}s (limit ${FIRST_START_LIMIT_S}s)"
  python3 -c "import sys; sys.exit(0 if $ready <= $FIRST_START_LIMIT_S else 1)" \
    || fail "first start took ${ready}s, over ${FIRST_START_LIMIT_S}s"
fi
venv_mb=$(du -sm .venv | cut -f1)
echo "venv after make serve: ${venv_mb} MB (limit ${VENV_LIMIT_MB} MB)"
(( venv_mb <= VENV_LIMIT_MB )) || fail "the venv is ${venv_mb} MB, over ${VENV_LIMIT_MB} MB"
grep -q '^\[inferd\] installing' "$work/serve.log" || fail "make serve did not say what it installs"
grep -q 'serving: gRPC' "$work/serve.log" || fail "make serve's log has no line of the addresses it serves on"
if grep -nE 'oneDNN|absl::|This TensorFlow binary|Traceback' "$work/serve.log"; then fail "make serve's log shows banners or a traceback"; fi
stop_server
echo "--- make serve's output"; cat "$work/serve.log"; echo "---"

echo "== packaging"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q build twine
for mode in "." "-e ."; do
  # PYTHONDONTWRITEBYTECODE makes setuptools warn about itself; only the project's warnings count.
  if env -u PYTHONDONTWRITEBYTECODE "$work/tools/bin/pip" install --no-deps -v $mode > "$work/pip.log" 2>&1; then
    if grep -iE 'warning|deprecat' "$work/pip.log" | grep -v 'Location .* is ignored'; then
      fail "pip install $mode printed warnings"
    fi
  else
    fail "pip install $mode failed"; tail -20 "$work/pip.log" >&2
  fi
done
rm -rf build ./*.egg-info
env -u PYTHONDONTWRITEBYTECODE "$work/tools/bin/python" -m build -q --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { fail "python -m build failed"; tail -20 "$work/build.log" >&2; }
"$work/tools/bin/twine" check --strict "$work"/dist/* || fail "twine check"
python3 -m venv "$work/wheel-venv"
wheel=$(ls "$work"/dist/inferd-*.whl)
"$work/wheel-venv/bin/pip" install -q "$wheel[onnx]"
mkdir -p "$work/elsewhere"
(cd "$work/elsewhere" && timeout 120 "$work/wheel-venv/bin/python" - <<'PY') || fail "the installed wheel did not serve its bundled repository"
import asyncio
import numpy as np
from inferd.clients import InferenceClient
from inferd.server.app import InferdServer
from inferd.server.settings import Settings

async def main() -> None:
    server = InferdServer(Settings(grpc_port=0, http_port=0, metrics_port=0, model_control_mode="none"))
    await server.start()
    assert "site-packages" in str(server.settings.model_repository), server.settings.model_repository
    # The client blocks: it runs on a thread while this loop serves.
    client = InferenceClient(f"127.0.0.1:{server.grpc_port}")
    index = await asyncio.to_thread(client.repository_index)
    states = {m.name: m.state for m in index}
    assert states and set(states.values()) == {"READY"}, states
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    out = await asyncio.to_thread(client.infer, "add_sub", {"INPUT0": a, "INPUT1": a})
    assert np.array_equal(out["OUTPUT0"], a * 2)
    print(f"the wheel served {sorted(states)} from {server.settings.model_repository}")
    await server.stop()

asyncio.run(main())
PY

if ! $skip_test; then
  echo "== make test"
  make test || fail "make test"
  echo "== the protocol tests on the oldest supported protobuf"
  make test-protobuf-oldest || fail "make test-protobuf-oldest"
fi

if (( ${#failures[@]} )); then
  printf 'first run: %d failure(s):\n' "${#failures[@]}" >&2; printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "first run: every check passed"
