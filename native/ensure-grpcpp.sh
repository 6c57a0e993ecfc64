#!/usr/bin/env bash
# grpc++'s headers and libraries for the native gRPC front end (native/grpc_frontend.cc), which
# setup.py builds when they are there. Installed with apt-get where that runs without a
# password prompt (root, or passwordless sudo); elsewhere a note says how, and the gRPC port is
# served by grpc.aio. NATIVE=no skips it. Idempotent: a present grpc++ costs one pkg-config call.
set -uo pipefail
[[ ${1:-auto} == no ]] && exit 0
pkg-config --exists grpc++ 2>/dev/null && exit 0
how="sudo apt-get install libgrpc++-dev (Debian/Ubuntu), then run make again"
if ! command -v apt-get >/dev/null; then
  echo "[inferd] grpc++ not found: gRPC is served by grpc.aio (slower). For the native front end: install grpc++ development files and run make again"
  exit 0
fi
if [[ $(id -u) == 0 ]]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
  echo "[inferd] grpc++ not found: gRPC is served by grpc.aio (slower). For the native front end: $how"
  exit 0
fi
echo "[inferd] installing grpc++ (Debian libgrpc++-dev, about 60 MB) for the native gRPC front end (first run only)"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -qq libgrpc++-dev >/dev/null 2>&1; then
  "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1
  "${SUDO[@]}" apt-get install -y -qq libgrpc++-dev >/dev/null 2>&1 ||
    echo "[inferd] apt-get could not install libgrpc++-dev: gRPC is served by grpc.aio (slower)"
fi
exit 0
