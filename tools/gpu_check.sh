#!/usr/bin/env bash
# The GPU check in one call: CUDA tests, full-width benchmarks (fp32/bf16, eager/compiled, against
# the reference path), a short Fashion-MNIST teacher + student run and the same recipe for
# resnet18 and resnet34 alone (is depth a handicap at full width?), the small pair's trials/hour at
# 1, 4 and 8 trials per GPU (sweep.py work --gpus), each part time-limited.
#
#   tools/gpu_check.sh OUT              on a CUDA machine; writes OUT/summary.{json,md}, OUT/logs.txt
#   tools/gpu_check.sh --dry-run OUT    every part on the CPU at a tiny size (run by the test suite)
#
# Python: $PYTHON if set, else the repository's .venv if there is one, else python3.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$repo/tools/gpu_check.py" "$@"
