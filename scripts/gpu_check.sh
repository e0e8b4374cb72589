#!/usr/bin/env bash
# On a machine with a CUDA GPU, a CUDA build of torch and pytest: the CUDA tests
# (every loss's CUDA step against the CPU step, with any host synchronisation made an
# error), the device-path tests, and the benchmark on the GPU. Run from the repository
# root; writes gpu-check/ (the test log and the benchmark's JSON).
#
#   bash scripts/gpu_check.sh            # about five minutes on a recent GPU
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"

# the source tree itself, nothing installed (such a machine may reach no package index)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out=gpu-check
mkdir -p "$out"
python -m pytest -q -rs tests/core/test_cuda.py tests/core/test_device_path.py | tee "$out/tests.txt"
python -m eqlosses_lab.benchmark --device cuda --json "$out/benchmark.json" | tee "$out/benchmark.txt"
