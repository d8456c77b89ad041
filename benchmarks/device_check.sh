#!/usr/bin/env bash
# One check of lmtune on a CUDA GPU (issue: the GPU path): the `gpu` test tier, then one table of
# tokens/s, MFU, peak memory and the planner's prediction for random Llamas of the 1B and 8B
# shapes (LoRA, QLoRA, full fine-tune, and TRL's SFTTrainer for the ratio).
#
#   benchmarks/device_check.sh                 # on the GPU machine (about 8 minutes on one H200)
#   benchmarks/device_check.sh --cpu-smoke     # tiny shapes on the CPU (make test runs this)
#
# The GPU machine has no internet: wheels lmtune needs beyond its preinstalled stack travel in
# .whl/ (filled by `make wheels`) and are installed from there with pip --no-index.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0

if [ "${1:-}" != "--cpu-smoke" ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl/"
    # Distribution names from the wheel file names (name-version-...whl).
    names=$(for w in .whl/*.whl; do basename "$w" | cut -d- -f1; done)
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --find-links .whl $names \
      || "$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl \
      || status=1
  fi
  "$PY" -c "import torch; print('== torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  echo "== gpu test tier"
  timeout 240 "$PY" -m pytest -q -p no:randomly -m gpu tests/gpu || status=1
fi

echo "== training table"
"$PY" benchmarks/device_bench.py "$@" || status=1
exit $status
