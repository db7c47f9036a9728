#!/usr/bin/env bash
# Create .venv and install llmi into it. Usage: scripts/setup.sh [--dev] [--control-plane]
#   (default)        runtime + control plane: serves models on this machine
#   --dev            also the test and lint tools
#   --control-plane  router and operator only (Kubernetes clients, no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="runtime,kube"
for arg in "$@"; do
  case "$arg" in
    --dev) extras="runtime,kube,dev" ;;
    --control-plane) extras="kube" ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet --upgrade pip
if [[ "$extras" == *runtime* ]]; then
  # torch first and alone, so the pin below keeps this exact build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$extras]"
else
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
fi
echo "llmi installed in .venv ($(.venv/bin/llmi --version))"
