#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: parity, memory truth, parking and vLLM checks (scripts/gpu_check.py).
# Usage: scripts/gpu-check.sh [--device cuda|cpu] [--models a,b] [--json FILE]; sets itself up if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -x .venv/bin/python ] || scripts/setup.sh --dev
exec timeout 600 .venv/bin/python scripts/gpu_check.py "$@"
