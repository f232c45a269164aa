#!/usr/bin/env bash
# Check the provider agent's real GPU path on a machine with an NVIDIA GPU:
# NVML discovery and telemetry, tiny CUDA jobs through ProcessRuntime, each GPU
# given alone to a sandboxed job that must reach no other (its /dev, nvidia-smi -L,
# CUDA with CUDA_VISIBLE_DEVICES unset), and containers with --gpus when Docker has
# NVIDIA's runtime (one given device 0 must list one GPU). Run from anywhere:
#   bash scripts/gpu_check.sh
# Exit status: 0 all passed, 1 a check failed, 2 no NVIDIA GPU usable.
set -uo pipefail
cd "$(dirname "$0")/.."

# A Python that can import pynvml: the project's venv, else python3 itself
# (enough offline), else a fresh .venv with what the agent needs.
if [ -x .venv/bin/python ] && .venv/bin/python -c "import pynvml" 2>/dev/null; then
  PY=.venv/bin/python
elif python3 -c "import sys, pynvml; assert sys.version_info >= (3, 10)" 2>/dev/null; then
  PY=python3
else
  echo "== creating .venv (python3 -m venv) and installing nvidia-ml-py httpx pydantic-settings"
  [ -x .venv/bin/python ] || python3 -m venv .venv || { echo "python3 -m venv failed"; exit 1; }
  .venv/bin/pip install --quiet nvidia-ml-py httpx pydantic-settings \
    || { echo "pip install failed (no network?): install nvidia-ml-py for python3 and rerun"; exit 1; }
  PY=.venv/bin/python
fi
echo "== python: $PY ($($PY --version 2>&1))"

echo "== NVML discovery, telemetry, CUDA jobs through ProcessRuntime, one GPU per sandbox"
timeout 180 "$PY" -m worker_gpu.selfcheck
status=$?
if [ "$status" -eq 124 ]; then echo "selfcheck timed out after 180 s"; status=1; fi
[ "$status" -eq 2 ] && exit 2

echo
echo "== Docker with NVIDIA GPUs"
if ! command -v docker >/dev/null 2>&1; then
  echo "docker: not installed; skipped"
elif ! docker info >/dev/null 2>&1; then
  echo "docker: no engine answers 'docker info'; skipped"
elif ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
    && ! command -v nvidia-container-runtime-hook >/dev/null 2>&1; then
  echo "docker: NVIDIA container runtime not configured; skipped"
else
  # Only images already here: a GPU check must not depend on reaching a registry.
  image=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -i cuda | grep -v '<none>' | head -n 1)
  if [ -z "$image" ]; then
    echo "docker: no local CUDA image (docker images | grep cuda); skipped"
  else
    echo "docker run --rm --gpus all $image nvidia-smi -L"
    start=$(date +%s%N)
    timeout 120 docker run --rm --gpus all "$image" nvidia-smi -L
    rc=$?
    echo "docker: exit=$rc wall=$(( ($(date +%s%N) - start) / 1000000 )) ms"
    [ "$rc" -eq 0 ] || status=1
    # As the docker runtime asks (device_requests with the job's own device ids only).
    echo "docker run --rm --gpus device=0 $image nvidia-smi -L"
    listed=$(timeout 120 docker run --rm --gpus device=0 "$image" nvidia-smi -L)
    echo "$listed"
    if [ "$(printf '%s\n' "$listed" | grep -c '^GPU ')" -ne 1 ]; then
      echo "docker: a container given device 0 lists other than one GPU"; status=1
    fi
  fi
fi

echo
[ "$status" -eq 0 ] && echo "gpu_check: all passed" || echo "gpu_check: FAILED"
exit "$status"
